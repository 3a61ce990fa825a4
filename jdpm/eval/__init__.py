"""Evaluation metrics over features computed elsewhere (NumPy only; no Flax, and JAX only on request).

FID/sFID (Fréchet distance of Gaussian statistics), Inception Score, improved precision/recall, and
reference statistics in the .npz layout of OpenAI's ADM evaluator, with its conventions; and the
full-reference image metrics PSNR, SSIM and MS-SSIM (`image_quality`, in JAX, equal to scikit-image's).
"""

from jdpm.eval.frechet import frechet_distance, gaussian_stats, psd_factor, trace_sqrt_product
from jdpm.eval.feature_stats import FeatureStats
from jdpm.eval.inception_score import inception_score
from jdpm.eval.manifold import manifold_radii, pairwise_sq_distances, precision_recall
from jdpm.eval.reference import Reference, load_reference, make_reference, save_reference
from jdpm.eval.suite import METRICS, evaluate
from jdpm.eval.image_quality import ms_ssim, psnr, ssim
