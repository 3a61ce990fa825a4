"""DisDiff against the official code: UNet (frozen path and sub-gradient fields), orthogonal factor matrix,
encoder, schedule coefficients and both losses, on tiny random models.

Reference file tests/data/disdiff_tiny.npz is written by tools/make_disdiff_reference.py (copied from the
official-code reference tensors). The first stage (VQ decoder) is not reimplemented: the loss check feeds the
stored decodes of the two x0 predictions through a recorded decoder that first checks its inputs.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdpm.disentangle import convert, losses
from jdpm.disentangle.encoder import FactorEncoder
from jdpm.disentangle.shift_unet import FROZEN_UNET_PATTERNS, ShiftUNet, orthogonal_factor_matrix
from jdpm.training import freeze

DATA = pathlib.Path(__file__).parent / "data" / "disdiff_tiny.npz"


def nhwc(a):
  return jnp.asarray(np.asarray(a, np.float32).transpose(0, 2, 3, 1))


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


@pytest.fixture(scope="module")
def ref():
  d = np.load(DATA)
  cfg = json.loads(str(d["meta/set_config_json"]))
  u = cfg["unet"]
  unet = ShiftUNet(model_channels=u["model_channels"], channel_mult=tuple(u["channel_mult"]),
                   num_res_blocks=u["num_res_blocks"], attention_resolutions=tuple(u["attention_resolutions"]),
                   num_heads=u["num_heads"], latent_unit=cfg["N"], repre_emb_channels=cfg["fdim"])
  state = lambda comp: {k.split("/param/")[1]: d[k] for k in d.files if k.startswith(comp + "/param/")}
  x, t, z = nhwc(d["unet/in/x_t"]), jnp.asarray(d["unet/in/t"]), jnp.asarray(d["unet/in/z"])
  # Shapes only (eval_shape): the values all come from the official state dict.
  unet_vars = convert.unet_from_torch(state("unet"), jax.eval_shape(unet.init, jax.random.PRNGKey(0), x, t, z))
  encoder = FactorEncoder(width=cfg["enc_d"], latent_unit=cfg["N"], factor_dim=cfg["fdim"])
  image = nhwc(d["encoder/in/x"])
  enc_vars = convert.encoder_from_torch(state("encoder"), jax.eval_shape(encoder.init, jax.random.PRNGKey(0), image))
  apply = jax.jit(unet.apply)  # one compilation serves the UNet and the loss checks
  return dict(d=d, cfg=cfg, unet=unet, unet_vars=unet_vars, encoder=encoder, enc_vars=enc_vars, image=image,
              apply=apply)


def test_unet_matches_official(ref):
  d, unet = ref["d"], ref["unet"]
  x, t, z = nhwc(d["unet/in/x_t"]), jnp.asarray(d["unet/in/t"]), jnp.asarray(d["unet/in/z"])
  out = ref["apply"](ref["unet_vars"], x, t, z, jnp.asarray(d["unet/in/sampled_concept"]))
  assert rel_err(out["pred"], nhwc(d["unet/out/pred"])) < 1e-5
  assert rel_err(out["out_grad"], nhwc(d["unet/out/out_grad"])) < 1e-5
  assert rel_err(out["G"], np.asarray(d["unet/out/G"]).transpose(0, 1, 3, 4, 2)) < 1e-5
  assert rel_err(out["sub_grad"], nhwc(d["unet/out/sc_sub_grad"])) < 1e-5


def test_orthogonal_factor_embeddings(ref):
  unet = ref["unet"]
  p = np.asarray(unet.apply(ref["unet_vars"], method=unet.factor_embeddings), np.float64)
  assert rel_err(p, ref["d"]["unet/mid/prt_emb"]) < 1e-5
  np.testing.assert_allclose(p @ p.T, np.eye(len(p)), atol=1e-5)
  # whatever W is (here a fresh standard-normal draw, as the official initialisation)
  w = jax.random.normal(jax.random.PRNGKey(3), (64, 64))
  q = np.asarray(orthogonal_factor_matrix(w), np.float64)
  np.testing.assert_allclose(q @ q.T, np.eye(len(q)), atol=1e-4)


def test_encoder_matches_official(ref):
  enc, v, d = ref["encoder"], ref["enc_vars"], ref["d"]
  assert rel_err(enc.apply(v, ref["image"]), d["encoder/out"]) < 1e-5
  train_out, _ = enc.apply(v, ref["image"], train=True, mutable=["batch_stats"])
  assert rel_err(train_out, d["encoder/out_trainmode"]) < 1e-5


def test_schedule_coefficients_match_official(ref):
  sched, d = losses.LDMSchedule.linear(), ref["d"]
  for name in ("alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "shift_coef", "ddim_coef"):
    np.testing.assert_allclose(getattr(sched, name), d[f"sched/{name}"], rtol=1e-6, atol=1e-7)
  t = d["loss/in/t"]
  np.testing.assert_allclose(sched.shift_coef[t], d["loss/mid/shift_coef_t"].ravel(), rtol=1e-6)
  np.testing.assert_allclose(sched.ddim_coef[t], d["loss/mid/ddim_coef_t"].ravel(), rtol=1e-6)


def _loss(ref, weight_type, decode=None):
  d, unet, enc = ref["d"], ref["unet"], ref["encoder"]
  model_fn = lambda x, t, z, c: ref["apply"](ref["unet_vars"], x, t, z, c)
  encode = jax.jit(lambda img: enc.apply(ref["enc_vars"], img))  # the reference ran in eval mode
  if decode is None:
    recorded = iter([("loss/dis/z_start", "loss/dis/pred_x0_t"), ("loss/dis/z_start_new", "loss/dis/pred_x0_new_t")])

    def decode(z):  # the stored VQ decodes of the two x0 predictions, after checking the inputs
      expected, image = next(recorded)
      assert rel_err(z, nhwc(d[expected])) < 1e-5, expected
      return nhwc(d[image])
  return losses.disdiff_loss(model_fn, encode, encode, nhwc(d["loss/in/x_start"]), ref["image"],
                             jnp.asarray(d["loss/in/t"]), nhwc(d["loss/in/noise"]),
                             jnp.asarray(d["loss/mid/sampled_concept"]), losses.LDMSchedule.linear(),
                             decode=decode, dis_weight=0.05, weight_type=weight_type)


def test_losses_match_official(ref):
  d = ref["d"]
  loss, terms = _loss(ref, "Z")
  assert rel_err(terms["cond"], d["loss/in/cond"]) < 1e-5
  assert rel_err(terms["x_noisy"], nhwc(d["loss/mid/x_noisy"])) < 1e-6
  assert rel_err(terms["eps_pred"], nhwc(d["loss/mid/eps_pred"])) < 1e-5
  for key in ("loss_simple_per_sample",):
    assert rel_err(terms["loss_simple"], d[f"loss/mid/{key}"]) < 1e-5
  for key, ours in (("pred_z_flat", "pred_z"), ("pred_z_new_flat", "pred_z_new"), ("logits", "logits"),
                    ("logits_deta", "logits_deta"), ("ce", "ce"), ("dis_weight_Z", "weight"),
                    ("dis_loss", "dis_loss")):
    assert rel_err(terms[ours], d[f"loss/dis/{key}"]) < 2e-5, key
  np.testing.assert_allclose(terms["ce_deta"], d["loss/dis/ce_deta"], rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(loss, d["loss/out/loss"], rtol=1e-5)
  loss_im, terms_im = _loss(ref, "IM")
  assert rel_err(terms_im["weight"], d["loss_IM/dis/dis_weight_IM"]) < 1e-5
  assert rel_err(terms_im["dis_loss"], d["loss_IM/dis/dis_loss"]) < 2e-5
  np.testing.assert_allclose(loss_im, d["loss_IM/out/loss"], rtol=1e-5)


def test_losses_reproduce_hand_computation():
  """The disentangling terms on a 2-example, 3-factor case computed by hand."""
  pred_z = jnp.array([[[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [0.0, 0.0], [3.0, 4.0]]])
  pred_z_new = jnp.array([[[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [0.0, 1.0], [3.0, 4.0]]])
  cond = jnp.zeros_like(pred_z)
  concept = jnp.array([0, 1])
  terms = losses.disentangling_terms(pred_z, pred_z_new, cond, concept)
  # logits = |pred_z - z| - |pred_z_new - z| per factor; logits_deta = |pred_z - pred_z_new|
  logits = np.array([[0 - 5, 1 - 1, 2 - 2], [np.sqrt(2) - np.sqrt(2), 0 - 1, 5 - 5]])
  deta = np.array([[5.0, 0, 0], [0, 1.0, 0]])
  np.testing.assert_allclose(terms["logits"], logits, atol=1e-6)
  np.testing.assert_allclose(terms["logits_deta"], deta, atol=1e-6)
  ce = lambda l, c: -(l[c] - np.log(np.exp(l).sum()))
  np.testing.assert_allclose(terms["ce"], [ce(logits[0], 0), ce(logits[1], 1)], rtol=1e-6)
  np.testing.assert_allclose(terms["ce_deta"], [ce(deta[0], 0), ce(deta[1], 1)], rtol=1e-6)


def test_trainable_set_is_the_official_one(ref):
  """The parameters left trainable by FROZEN_UNET_PATTERNS are exactly those that receive gradients in the
  official code (151 tensors: shift decoder, repre_embed, part_emb, part_latents, and the encoder)."""
  trainable, _ = freeze.split({"unet": ref["unet_vars"]["params"]}, FROZEN_UNET_PATTERNS)
  ours = {convert.unet_torch_name(path, ref["unet_vars"]["params"]) for path in freeze.flatten_dict(trainable["unet"])}
  names = ref["d"]["grad/names_with_grad"]
  assert ours == {n.split("/", 1)[1] for n in names if n.startswith("unet/")}
  n_enc = sum(1 for n in names if n.startswith("encoder/"))
  assert len(jax.tree_util.tree_leaves(ref["enc_vars"]["params"])) == n_enc
