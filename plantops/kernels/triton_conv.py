NAME = "triton"


def unavailable_reason(device_type, dtype):
    return "the Triton kernels are not written yet"
