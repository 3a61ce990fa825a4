"""Model bundles with a jitted sampler: ``text_to_image`` for Stable Diffusion folders.

  pipe = jdpm.pipelines.load_pipeline("path/to/stable-diffusion-v1-5")
  images = jdpm.pipelines.text_to_image(pipe, ["a photo of a cat"], steps=20)["images"]
"""

from jdpm.pipelines import text_to_image as text_to_image_lib
from jdpm.pipelines.text_to_image import TextToImagePipeline, load_pipeline, text_to_image

__all__ = ["TextToImagePipeline", "load_pipeline", "text_to_image", "text_to_image_lib"]
