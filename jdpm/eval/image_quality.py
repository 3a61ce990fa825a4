"""Full-reference image quality: PSNR, SSIM and MS-SSIM, in JAX (jit-able, batched).

Conventions follow ``skimage.metrics`` so that numbers can be compared with published tables:

* images are (H, W, C) or (B, H, W, C) floats (NHWC); a batch gives one value per image;
* `psnr` = 10 log10(data_range^2 / MSE), the MSE over all pixels and channels of one image;
* `ssim` is Wang et al. (2004): a Gaussian window of sigma 1.5 truncated at 3.5 sigma (11 x 11),
  K1 = 0.01, K2 = 0.03, population (not sample) covariances, the SSIM map cropped by the window's
  radius (5 pixels on each side: the pixels whose window would leave the image) before averaging,
  and the mean over channels. This equals ``skimage.metrics.structural_similarity(x, y,
  data_range=..., channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``;
* `ms_ssim` is Wang et al. (2003): contrast-structure terms at every scale, luminance only at the
  coarsest, 2 x 2 average pooling between scales, the five standard exponents. Small images get
  fewer scales (each scale must hold the 11 x 11 window) with the exponents renormalised; the
  number used is returned by `ms_ssim_scales`.

* `lpips` is version 0.1 of the `lpips` package with an AlexNet or VGG16 backbone in Flax; its weights
  (the package's linear heads, torchvision's backbone) are loaded from the user's files by
  `lpips_params_from_torch`: jdpm ships none.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _as_batch(x, y, name):
  x = jnp.asarray(x)
  y = jnp.asarray(y)
  if x.shape != y.shape:
    raise ValueError(f"{name}: the two images must have the same shape; got {x.shape} and {y.shape}.")
  if x.ndim not in (3, 4):
    raise ValueError(f"{name}: images must be (H, W, C) or (B, H, W, C); got shape {x.shape}.")
  single = x.ndim == 3
  if single:
    x, y = x[None], y[None]
  dtype = jnp.promote_types(jnp.result_type(x, y), jnp.float32)
  return x.astype(dtype), y.astype(dtype), single


def psnr(x, y, data_range=1.0):
  """Peak signal-to-noise ratio in dB (inf for identical images).

  Args:
    x, y: (H, W, C) or (B, H, W, C) float images.
    data_range: the peak value (1.0 for images in [0, 1], 2.0 for [-1, 1], 255 for 8-bit).
  Returns:
    a scalar for one image, (B,) for a batch.
  """
  x, y, single = _as_batch(x, y, "psnr")
  mse = jnp.mean(jnp.square(x - y), axis=(1, 2, 3))
  value = 10.0 * jnp.log10(data_range ** 2 / mse)
  return value[0] if single else value


def gaussian_window(sigma=SSIM_SIGMA, truncate=SSIM_TRUNCATE):
  """The normalised 1-D Gaussian of scipy.ndimage.gaussian_filter: radius int(truncate sigma + 0.5)."""
  radius = int(truncate * sigma + 0.5)
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  w = jnp.exp(-0.5 * jnp.square(taps / sigma))
  return w / jnp.sum(w)


def _filter_valid(x, window):
  """Separable filtering of (B, H, W, C) with `window`, keeping only the fully covered pixels."""
  k = window.shape[0]
  c = x.shape[-1]
  w = window.astype(x.dtype)
  kh = jnp.tile(w.reshape(k, 1, 1, 1), (1, 1, 1, c))
  kw = jnp.tile(w.reshape(1, k, 1, 1), (1, 1, 1, c))
  dn = ("NHWC", "HWIO", "NHWC")
  x = jax.lax.conv_general_dilated(x, kh, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c,
                                   precision=jax.lax.Precision.HIGHEST)
  return jax.lax.conv_general_dilated(x, kw, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c,
                                      precision=jax.lax.Precision.HIGHEST)


def _ssim_terms(x, y, data_range, window):
  """Per-channel means over the valid region of (luminance * cs, cs): each (B, C)."""
  c1 = (SSIM_K1 * data_range) ** 2
  c2 = (SSIM_K2 * data_range) ** 2
  mu_x = _filter_valid(x, window)
  mu_y = _filter_valid(y, window)
  # Population second moments: E[x^2] - E[x]^2 under the window weights.
  var_x = _filter_valid(x * x, window) - mu_x * mu_x
  var_y = _filter_valid(y * y, window) - mu_y * mu_y
  cov = _filter_valid(x * y, window) - mu_x * mu_y
  luminance = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
  cs = (2 * cov + c2) / (var_x + var_y + c2)
  return jnp.mean(luminance * cs, axis=(1, 2)), jnp.mean(cs, axis=(1, 2))


def _check_size(x, window, name):
  k = window.shape[0]
  if min(x.shape[1], x.shape[2]) < k:
    raise ValueError(f"{name}: images of {x.shape[1]}x{x.shape[2]} pixels are smaller than the "
                     f"{k}x{k} Gaussian window; use images of at least {k}x{k}.")


def ssim(x, y, data_range=1.0):
  """Structural similarity (Wang et al. 2004), equal to scikit-image's Gaussian-window SSIM.

  Args:
    x, y: (H, W, C) or (B, H, W, C) float images, H and W >= 11.
    data_range: the range of the values (1.0 for [0, 1], 2.0 for [-1, 1]).
  Returns:
    the mean SSIM over the cropped map and the channels: a scalar, or (B,) for a batch.
  """
  x, y, single = _as_batch(x, y, "ssim")
  window = gaussian_window()
  _check_size(x, window, "ssim")
  full, _ = _ssim_terms(x, y, data_range, window)
  value = jnp.mean(full, axis=-1)
  return value[0] if single else value


def ms_ssim_scales(height, width, max_scales=len(MS_SSIM_WEIGHTS)):
  """How many scales MS-SSIM uses for an image: each scale halves the size and must hold the window."""
  k = gaussian_window().shape[0]
  side = min(height, width)
  if side < k:
    return 0
  return min(max_scales, 1 + int(math.floor(math.log2(side / k))))


def ms_ssim(x, y, data_range=1.0, scales=None):
  """Multi-scale SSIM (Wang, Simoncelli, Bovik 2003) with the Gaussian window of `ssim`.

  MS-SSIM = l_M^w_M * prod_j cs_j^w_j (per channel, then the mean over channels); negative cs values
  are clipped at 0 before the power (as common implementations do).

  Args:
    x, y: (H, W, C) or (B, H, W, C) float images.
    data_range: the range of the values.
    scales: the number of scales (default: as many of the standard five as the size allows). The
      exponents are the first `scales` standard ones, renormalised to sum to 1. One scale is `ssim`.
  Returns:
    a scalar, or (B,) for a batch.
  """
  x, y, single = _as_batch(x, y, "ms_ssim")
  window = gaussian_window()
  _check_size(x, window, "ms_ssim")
  possible = ms_ssim_scales(x.shape[1], x.shape[2])
  scales = possible if scales is None else int(scales)
  if not 1 <= scales <= possible:
    raise ValueError(f"ms_ssim: {scales} scales do not fit {x.shape[1]}x{x.shape[2]} images "
                     f"(at most {possible}).")
  weights = jnp.asarray(MS_SSIM_WEIGHTS[:scales], x.dtype)
  weights = weights / jnp.sum(weights)
  value = 1.0
  for j in range(scales):
    full, cs = _ssim_terms(x, y, data_range, window)
    if j == scales - 1:
      value = value * jnp.maximum(full, 0.0) ** weights[j]
    else:
      value = value * jnp.maximum(cs, 0.0) ** weights[j]
      x, y = _avg_pool2(x), _avg_pool2(y)
  value = jnp.mean(value, axis=-1)
  return value[0] if single else value


def _avg_pool2(x):
  b, h, w, c = x.shape
  x = x[:, : h - h % 2, : w - w % 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


# -- LPIPS -------------------------------------------------------------------------------------------
# Zhang et al. (2018), version 0.1 of the `lpips` package: the input scaling layer, the ReLU outputs of
# five stages of AlexNet or VGG16 (torchvision's `features`), each unit-normalised over channels, the
# squared difference weighted by a trained 1x1 "linear head" per stage, averaged over space, summed.
# The heads ship inside the `lpips` package (weights/v0.1/<net>.pth); the backbone is the torchvision
# ImageNet model, which the user supplies (jdpm ships neither).

LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
# (torchvision features index, out channels, kernel, stride, padding) of every conv; "M" a max pool;
# "|" ends an LPIPS stage (its ReLU output is compared).
LPIPS_LAYERS = {
    "alex": [(0, 64, 11, 4, 2), "|", ("M", 3), (3, 192, 5, 1, 2), "|", ("M", 3), (6, 384, 3, 1, 1), "|",
             (8, 256, 3, 1, 1), "|", (10, 256, 3, 1, 1), "|"],
    "vgg": [(0, 64, 3, 1, 1), (2, 64, 3, 1, 1), "|", ("M", 2), (5, 128, 3, 1, 1), (7, 128, 3, 1, 1), "|",
            ("M", 2), (10, 256, 3, 1, 1), (12, 256, 3, 1, 1), (14, 256, 3, 1, 1), "|", ("M", 2),
            (17, 512, 3, 1, 1), (19, 512, 3, 1, 1), (21, 512, 3, 1, 1), "|", ("M", 2),
            (24, 512, 3, 1, 1), (26, 512, 3, 1, 1), (28, 512, 3, 1, 1), "|"],
}


def _lpips_module():
  import flax.linen as nn  # pylint: disable=import-outside-toplevel  (Flax only where LPIPS is used)

  class LPIPS(nn.Module):
    """LPIPS distance of (B, H, W, 3) images in [-1, 1]: (B,). Parameters: `lpips_params_from_torch`."""
    net: str = "alex"

    def features(self, x, convs):
      x = (x - jnp.asarray(LPIPS_SHIFT)) / jnp.asarray(LPIPS_SCALE)
      outs = []
      for layer in LPIPS_LAYERS[self.net]:
        if layer == "|":
          outs.append(x)
        elif layer[0] == "M":
          x = nn.max_pool(x, (layer[1], layer[1]), strides=(2, 2))
        else:
          x = nn.relu(convs[layer[0]](x))
      return outs

    @nn.compact
    def __call__(self, x, y):
      convs = {index: nn.Conv(channels, (k, k), strides=(s, s), padding=((p, p), (p, p)), name=f"conv{index}",
                              precision=jax.lax.Precision.HIGHEST)
               for index, channels, k, s, p in (l for l in LPIPS_LAYERS[self.net] if l != "|" and l[0] != "M")}
      total = 0.0
      for i, (fx, fy) in enumerate(zip(self.features(x, convs), self.features(y, convs))):
        nx = fx / (jnp.sqrt(jnp.sum(fx ** 2, axis=-1, keepdims=True)) + 1e-10)
        ny = fy / (jnp.sqrt(jnp.sum(fy ** 2, axis=-1, keepdims=True)) + 1e-10)
        head = nn.Conv(1, (1, 1), use_bias=False, name=f"lin{i}", precision=jax.lax.Precision.HIGHEST)
        total = total + jnp.mean(head((nx - ny) ** 2), axis=(1, 2, 3))
      return total

  return LPIPS


def lpips_params_from_torch(backbone, heads, net="alex"):
  """Flax parameters of `LPIPS` from PyTorch state dicts (file paths or {name: array} mappings).

  Args:
    backbone: torchvision's AlexNet / VGG16 weights (keys ``features.<i>.weight`` / ``.bias``, as in
      ``torchvision.models.alexnet(weights=...).state_dict()``), or an `lpips` model's state dict
      (keys ``net.slice<k>.<i>.weight``).
    heads: the `lpips` package's ``weights/v0.1/<net>.pth`` (keys ``lin<k>.model.1.weight``), or a
      mapping with those keys.
  Raises:
    ValueError: a weight is missing (the message names it).
  """
  from jdpm.convert.state_dict import load_state_dict  # pylint: disable=import-outside-toplevel
  if net not in LPIPS_LAYERS:
    raise ValueError(f"LPIPS net must be one of {sorted(LPIPS_LAYERS)}; got {net!r}.")
  b = load_state_dict(backbone)
  h = load_state_dict(heads)
  by_index = {}
  for key, value in b.items():
    parts = key.split(".")
    if parts[0] == "features" or (parts[0] == "net" and parts[1].startswith("slice")):
      by_index[(int(parts[-2]), parts[-1])] = value
  params = {}
  for layer in LPIPS_LAYERS[net]:
    if isinstance(layer, tuple) and layer[0] != "M":
      i = layer[0]
      if (i, "weight") not in by_index:
        raise ValueError(f"the {net} backbone weights have no conv layer features.{i} (keys look like "
                         f"{sorted(b)[:3]}); pass torchvision's {net} state dict.")
      params[f"conv{i}"] = {"kernel": np.transpose(by_index[(i, "weight")], (2, 3, 1, 0)),
                            "bias": by_index[(i, "bias")]}
  for k in range(5):
    key = f"lin{k}.model.1.weight"
    if key not in h:
      raise ValueError(f"the LPIPS heads have no {key}; pass the lpips package's weights/v0.1/{net}.pth.")
    params[f"lin{k}"] = {"kernel": np.transpose(h[key], (2, 3, 1, 0))}
  return jax.tree.map(jnp.asarray, params)


def lpips(x, y, params, net="alex", data_range=1.0):
  """LPIPS distance (lower is closer) of (H, W, 3) / (B, H, W, 3) images with values in [0, data_range].

  Args:
    params: from `lpips_params_from_torch` (the weights are not shipped with jdpm).
  Returns:
    a scalar, or (B,) for a batch.
  """
  x, y, single = _as_batch(x, y, "lpips")
  value = _lpips_apply(params, 2.0 * x / data_range - 1.0, 2.0 * y / data_range - 1.0, net)
  return value[0] if single else value


@functools.partial(jax.jit, static_argnums=3)
def _lpips_apply(params, x, y, net):
  return _lpips_module()(net=net).apply({"params": params}, x, y)
