"""Ground-truth-factor data: row-major indexing as disentanglement_lib, rendering by index, bad input."""

import numpy as np
import pytest

from jdpm.data import factors as factor_data


@pytest.mark.parametrize("source", [factor_data.DSprites(), factor_data.Shapes3D(), factor_data.DSprites.tiny(),
                                    factor_data.Shapes3D.tiny()], ids=["dsprites", "shapes3d", "dsprites_tiny",
                                                                       "shapes3d_tiny"])
def test_index_factor_round_trip(source):
  rs = np.random.RandomState(0)
  index = rs.randint(source.num_images, size=500)
  np.testing.assert_array_equal(source.index_of(source.factors_of(index)), index)
  factors = source.sample_factors(500, rs)
  np.testing.assert_array_equal(source.factors_of(source.index_of(factors)), factors)
  # Official row-major order: the last factor varies fastest (disentanglement_lib's factor_bases).
  bases = np.prod(source.factor_sizes) / np.cumprod(source.factor_sizes)
  np.testing.assert_array_equal(source.index_of(factors), np.array(factors @ bases, dtype=np.int64))
  np.testing.assert_array_equal(source.factors_of(1), [0] * (len(source.factor_sizes) - 1) + [1])


def test_full_sizes_match_the_original_data_sets():
  assert factor_data.DSprites().factor_sizes == [3, 6, 40, 32, 32]
  assert factor_data.DSprites().num_images == 737280
  assert factor_data.Shapes3D().factor_sizes == [10, 10, 10, 8, 4, 15]
  assert factor_data.Shapes3D().num_images == 480000
  np.testing.assert_allclose(factor_data.DSprites().values[1], np.linspace(0.5, 1, 6))
  np.testing.assert_allclose(factor_data.DSprites().values[2][[0, -1]], [0, 2 * np.pi])


def test_getitem_renders_the_indexed_factors():
  source = factor_data.DSprites()
  item = source[123456]
  assert item["image"].shape == (64, 64, 1) and item["image"].dtype == np.uint8
  assert set(np.unique(item["image"])) <= {0, 255}
  np.testing.assert_array_equal(item["factors"], source.factors_of(123456))
  np.testing.assert_array_equal(item["image"][..., 0] > 0, source.render(item["factors"][None])[0, ..., 0] > 0)


def test_each_factor_changes_the_image():
  for source in (factor_data.Shapes3D(image_size=32), factor_data.DSprites(image_size=32)):
    base = np.array([1] * len(source.factor_sizes))
    image = source.render(base[None])[0]
    for k in range(len(base)):
      if k == 2 and isinstance(source, factor_data.DSprites):
        continue  # orientation of a symmetric sprite may leave it unchanged; covered by the square below
      other = base.copy()
      other[k] = source.factor_sizes[k] - 1
      assert np.abs(source.render(other[None])[0] - image).max() > 0.1, (type(source).__name__, k)
  sprites = factor_data.DSprites(image_size=32)
  square = [0, 5, 0, 16, 16]
  rotated = [0, 5, 5, 16, 16]
  assert np.abs(sprites.render([square]) - sprites.render([rotated])).max() > 0.5


def test_downscaled_variant_keeps_end_values():
  tiny = factor_data.Shapes3D.tiny()
  assert tiny.factor_sizes == [4, 4, 4, 3, 4, 3]
  np.testing.assert_allclose(tiny.values[5], [-30, 0, 30])
  assert tiny.render([[0] * 6]).shape == (1, 32, 32, 3)


def test_bad_factors_are_one_clear_error():
  source = factor_data.Shapes3D.tiny()
  with pytest.raises(ValueError, match="6 factors"):
    source.index_of([[0, 0, 0]])
  with pytest.raises(ValueError, match="out of range"):
    source.render([[0, 0, 0, 0, 4, 0]])
  with pytest.raises(IndexError):
    source.factors_of(source.num_images)
  with pytest.raises(ValueError, match="num_values"):
    factor_data.DSprites(num_values=(3, 6))
  with pytest.raises(ValueError, match="Unknown factor data set"):
    factor_data.make_source("mnist")
