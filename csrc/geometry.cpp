#include "planted_conv.h"

namespace plantops {

const char* check_geometry(const Geometry& g) {
  if (g.N < 0 || g.I_f < 0 || g.I_p < 0 || g.O_f < 0 || g.O_p < 0) return "negative size";
  if (g.KH < 1 || g.KW < 1) return "kernel size must be >= 1";
  if (g.SH < 1 || g.SW < 1) return "stride must be >= 1";
  if (g.PH < 0 || g.PW < 0) return "padding must be >= 0";
  if (g.OH != (g.H + 2 * g.PH - g.KH) / g.SH + 1 || g.OW != (g.W + 2 * g.PW - g.KW) / g.SW + 1)
    return "output size does not match input, kernel, stride and padding";
  if (g.OH < 1 || g.OW < 1) return "kernel larger than the padded input";
  return "";
}

}  // namespace plantops
