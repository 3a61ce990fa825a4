"""Flax Linen denoisers and the model registry.

``create(name, **kwargs)`` builds a model: "DiT-S/2" ... "DiT-XL/8", or "DiT" with explicit
sizes. ``count_params`` and ``count_macs`` measure a model without allocating its weights.
``ProxyClassifier`` is the small CNN behind the CPU-sized quality metric (``jdpm.eval.proxy``).
The Stable Diffusion VAE (``vae.AutoencoderKL``, ``vae.SD_VAE_CONFIG``) is not a denoiser and is
built directly, not through the registry; so are the FID feature network
``inception.InceptionV3`` and the CLIP text encoder (``clip_text.create("CLIP-L/14-text")``).
The diffusers UNets are the "UNet" family (``unet``): ``create("SD1.5-UNet")``, ``create("UNet", ...)``.
"""

from jdpm.models import amm
from jdpm.models import class_unet
from jdpm.models import clip_text
from jdpm.models import dit
from jdpm.models import edt
from jdpm.models import inception
from jdpm.models import layers
from jdpm.models import mdt
from jdpm.models import proxy_classifier
from jdpm.models import unet
from jdpm.models import vae
from jdpm.models.counting import count_macs, count_params
from jdpm.models.dit import DiT
from jdpm.models.edt import EDT
from jdpm.models.mdt import MDTv2
from jdpm.models.proxy_classifier import ProxyClassifier
from jdpm.models.registry import create, family_of, known_names, register, resolve
from jdpm.models.vae import AutoencoderKL

register("DiT", DiT, dit.PRESETS,
         defaults=dict(input_size=32, in_channels=4, num_classes=1000, learn_sigma=True))
register("EDT", EDT, edt.PRESETS,
         defaults=dict(input_size=32, in_channels=4, num_classes=1000, learn_sigma=True))
register("MDTv2", MDTv2, mdt.PRESETS, defaults=mdt.DEFAULTS)
# diffusers UNets: create("SD1.5-UNet"), or create("UNet", class_name=..., **diffusers config).
register("UNet", unet.make_unet, unet.PRESETS)
register("ClassUNet", class_unet.ClassUNet)

__all__ = ["AutoencoderKL", "DiT", "EDT", "MDTv2", "ProxyClassifier", "amm", "clip_text", "count_macs",
           "count_params", "create", "dit", "edt", "family_of", "inception", "known_names", "layers", "mdt",
           "proxy_classifier", "register", "resolve", "unet", "vae"]
