"""umT5 encoder parity with transformers' UMT5EncoderModel (random weights, never downloads).

A tiny UMT5EncoderModel (2 layers, so per-layer position biases matter) is randomised so every
path carries signal (norm weights too), saved with save_pretrained, loaded with umt5.load and
compared on a padded batch of uneven lengths, including one longer than max_distance so the
log-spaced and capped buckets are exercised. The tokenizer is checked against transformers'
T5Tokenizer built offline from the same SentencePiece model file.
"""

import io
import os
import shutil

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

from unity_jax import umt5  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from unity_jax.wan import safetensors_io  # noqa: E402  pylint: disable=g-import-not-at-top

ATOL = 1e-5
CONFIG = dict(vocab_size=96, d_model=32, d_kv=8, num_heads=4, num_layers=3, d_ff=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128,
              feed_forward_proj="gated-gelu")
SENTENCES = ["a cat sits on the mat", "the quick brown fox jumps over the lazy dog",
             "a red car drives along a wet road at night", "waves roll onto a sandy beach",
             "two people walk through a snowy forest", "the camera pans over a city skyline"]


def _random_model(seed=0, **overrides):
  torch.manual_seed(seed)
  model = transformers.UMT5EncoderModel(transformers.UMT5Config(**{**CONFIG, **overrides}))
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("layer_norm.weight"):
        p.uniform_(0.5, 1.5)   # HF initialises norms to 1: make a misapplied norm visible
      elif "relative_attention_bias" in name:
        p.normal_(0.0, 1.0)    # strong enough that a wrong bucket or a shared table shows
  return model.eval()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  model = _random_model()
  path = str(tmp_path_factory.mktemp("umt5") / "text_encoder")
  model.save_pretrained(path)
  return model, path


def _batch(rng, lengths, length, vocab):
  ids = np.zeros((len(lengths), length), np.int64)
  mask = np.zeros((len(lengths), length), np.int64)
  for i, n in enumerate(lengths):
    ids[i, :n] = rng.integers(3, vocab, n)
    ids[i, n - 1] = 1   # EOS, as the tokenizer ends each row
    mask[i, :n] = 1
  return ids, mask


def _torch_hidden(model, ids, mask):
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(ids),
                 attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()


@pytest.mark.parametrize("length,lengths", [(24, (24, 17, 5)), (160, (160, 131))])
def test_matches_transformers(hf_dir, length, lengths):
  model, path = hf_dir
  ids, mask = _batch(np.random.default_rng(length), lengths, length, CONFIG["vocab_size"])
  want = _torch_hidden(model, ids, mask)
  got = umt5.load(path)(ids, mask)
  assert got.dtype == np.float32 and got.shape == want.shape
  diff = np.abs(np.asarray(got) - want)
  err, padded = diff[mask.astype(bool)].max(), diff[~mask.astype(bool)].max(initial=0.0)
  print(f"umt5 parity L={length}: max |jax - torch| unmasked {err:.2e}, padded rows {padded:.2e}")
  assert err <= ATOL, err
  assert padded <= ATOL, padded   # padded rows are computed like HF's too (Wan zeroes them later)


def test_per_layer_bias_matters(hf_dir):
  """Sharing layer 0's table (T5's scheme) must change the output: the test can tell."""
  model, path = hf_dir
  ids, mask = _batch(np.random.default_rng(1), (24, 9), 24, CONFIG["vocab_size"])
  encoder = umt5.load(path)
  layers = dict(encoder.params["layers"])
  layers["rel_bias"] = np.broadcast_to(layers["rel_bias"][:1], layers["rel_bias"].shape)
  shared = umt5.Encoder({**encoder.params, "layers": layers}, encoder.config)(ids, mask)
  want = _torch_hidden(model, ids, mask)
  assert np.abs(np.asarray(shared) - want)[mask.astype(bool)].max() > 100 * ATOL


def test_buckets_match_transformers():
  model = _random_model()
  attention = model.encoder.block[0].layer[0].SelfAttention
  for length in (1, 7, 300, 1100):
    position = torch.arange(length)
    want = attention._relative_position_bucket(position[None, :] - position[:, None]).numpy()
    got = umt5.relative_position_buckets(length, 32, 128)
    np.testing.assert_array_equal(got, want)


def _rewrite(src, dst, edit):
  """Copies the HF directory with its tensors passed through `edit(dict) -> dict`."""
  os.makedirs(dst)
  shutil.copy(os.path.join(src, "config.json"), dst)
  checkpoint = safetensors_io.SafetensorsCheckpoint(src)
  tensors = edit({k: checkpoint.read(k) for k in checkpoint.keys()})
  safetensors_io.write_safetensors(os.path.join(dst, "model.safetensors"), tensors)
  return dst


def test_import_errors(hf_dir, tmp_path):
  _, path = hf_dir
  q = "encoder.block.1.layer.0.SelfAttention.q.weight"
  cases = [
      (lambda t: {k: v for k, v in t.items() if k != q}, f"missing tensor '{q}'"),
      (lambda t: {**t, "encoder.extra.weight": np.zeros(3, np.float32)},
       "unexpected tensor 'encoder.extra.weight'"),
      (lambda t: {**t, q: np.zeros((32, 33), np.float32)}, f"'{q}' has shape (32, 33)"),
      (lambda t: {k: v for k, v in t.items() if k != "shared.weight"}, "'shared.weight'"),
      (lambda t: {**t, "decoder.final_layer_norm.weight": np.ones(32, np.float32)},
       "allow_decoder=True"),
      (lambda t: {**t, "encoder.embed_tokens.weight": t["shared.weight"] + 1}, "differ"),
  ]
  for i, (edit, message) in enumerate(cases):
    bad = _rewrite(path, str(tmp_path / str(i)), edit)
    with pytest.raises(umt5.CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
      umt5.load(bad)


def test_tied_embedding_and_decoder_keys_load(hf_dir, tmp_path):
  model, path = hf_dir
  both = _rewrite(path, str(tmp_path / "both"), lambda t: {
      **t, "encoder.embed_tokens.weight": t["shared.weight"],
      "decoder.final_layer_norm.weight": np.ones(32, np.float32)})
  ids, mask = _batch(np.random.default_rng(2), (12, 4), 12, CONFIG["vocab_size"])
  got = umt5.load(both, allow_decoder=True)(ids, mask)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(umt5.load(path)(ids, mask)))


def test_sharded_index_and_bf16(hf_dir, tmp_path):
  """model.safetensors.index.json is followed; a bf16 checkpoint equals its fp32 upcast."""
  model, path = hf_dir
  sharded = str(tmp_path / "sharded")
  model.save_pretrained(sharded, max_shard_size="20KB")
  assert os.path.isfile(os.path.join(sharded, "model.safetensors.index.json"))
  ids, mask = _batch(np.random.default_rng(3), (16, 11), 16, CONFIG["vocab_size"])
  np.testing.assert_array_equal(np.asarray(umt5.load(sharded)(ids, mask)),
                                np.asarray(umt5.load(path)(ids, mask)))
  bf16 = str(tmp_path / "bf16")
  model.to(torch.bfloat16).save_pretrained(bf16)
  model.to(torch.float32)   # the bf16-rounded weights, back in fp32 for the reference
  err = np.abs(np.asarray(umt5.load(bf16)(ids, mask)) - _torch_hidden(model, ids, mask))
  assert err[mask.astype(bool)].max() <= ATOL


def test_mesh_load_equals_unsharded(hf_dir):
  model, path = hf_dir
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "fsdp"))
  sharded = umt5.load(path, mesh=mesh)
  assert sharded.params["layers"]["q"].sharding.spec[1] == "fsdp"
  assert sharded.params["embed"].sharding.spec[1] == "fsdp"
  ids, mask = _batch(np.random.default_rng(4), (20, 13, 6, 2), 20, CONFIG["vocab_size"])
  got = np.asarray(sharded(ids, mask))
  base = np.asarray(umt5.load(path)(ids, mask))
  # Sharded matmuls sum D in another order: equal params (below), outputs within ATOL.
  np.testing.assert_allclose(got, base, atol=ATOL, rtol=0)
  for leaf_sharded, leaf in zip(jax.tree.leaves(sharded.params),
                                jax.tree.leaves(umt5.load(path).params)):
    np.testing.assert_array_equal(np.asarray(leaf_sharded), np.asarray(leaf))


def test_wan_text_embeddings():
  hidden = np.random.default_rng(5).normal(size=(2, 6, 4)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
  out = np.asarray(umt5.wan_text_embeddings(hidden, mask, length=8))
  assert out.shape == (2, 8, 4)
  np.testing.assert_array_equal(out[0, :3], hidden[0, :3])
  np.testing.assert_array_equal(out[1, :6], hidden[1])
  assert not out[0, 3:].any() and not out[1, 6:].any()
  np.testing.assert_array_equal(np.asarray(umt5.wan_text_embeddings(hidden, mask, 4)), out[:, :4])


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
  """A tiny umT5-style SentencePiece model (pad 0, EOS 1, unk 2, no BOS) as spiece.model."""
  buffer = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(SENTENCES * 10), model_writer=buffer,
                                 vocab_size=48, hard_vocab_limit=False, pad_id=0, eos_id=1,
                                 unk_id=2, bos_id=-1, minloglevel=2)
  directory = tmp_path_factory.mktemp("tokenizer")
  path = str(directory / "spiece.model")
  with open(path, "wb") as f:
    f.write(buffer.getvalue())
  return path


def test_tokenizer_matches_t5_tokenizer(spiece):
  texts = ["a cat sits on the mat", "the quick brown fox jumps over the lazy dog at night",
           "  Zebra ÄÖ  waves\u00a0roll ", "", "x"]
  reference = transformers.T5Tokenizer.from_pretrained(os.path.dirname(spiece), extra_ids=0,
                                                       local_files_only=True)
  tokenizer = umt5.Tokenizer(spiece)
  assert (tokenizer.eos_id, tokenizer.pad_id) == (1, 0)
  for length in (32, 8, 1):
    ids, mask, truncated = tokenizer.encode(texts, length)
    want = reference(texts, padding="max_length", max_length=length, truncation=True,
                     return_attention_mask=True)
    np.testing.assert_array_equal(ids, np.array(want["input_ids"]))
    np.testing.assert_array_equal(mask, np.array(want["attention_mask"]))
    full = [len(tokenizer.pieces(t)) + 1 for t in texts]
    assert truncated == sum(n > length for n in full)
    assert ids.dtype == np.int32 and (ids[mask == 0] == 0).all()
    assert (ids[np.arange(len(texts)), mask.sum(1) - 1] == 1).all()   # every row ends in EOS
  assert umt5.wan_prompt_clean("  a &amp;amp; b \n\t c ") == "a & b c"


def test_compiled_once_per_shape(hf_dir):
  _, path = hf_dir
  encoder = umt5.load(path)
  rng = np.random.default_rng(6)
  encoder(*_batch(rng, (10, 3), 10, CONFIG["vocab_size"]))
  before = umt5.encode_jit._cache_size()   # pylint: disable=protected-access
  encoder(*_batch(rng, (7, 10), 10, CONFIG["vocab_size"]))   # same shape, other values
  assert umt5.encode_jit._cache_size() == before   # pylint: disable=protected-access
  with pytest.raises(ValueError, match="must both be"):
    encoder(np.zeros((2, 4), np.int32), np.ones((2, 5), np.int32))


@pytest.mark.slow
def test_matches_transformers_at_xxl_width(tmp_path):
  """umT5-XXL's layer geometry (D 4096, 64 heads of 64, d_ff 10240; 2 layers, small vocab):
  float32 accumulation over the real widths stays within the same fixed tolerance."""
  model = _random_model(vocab_size=256, d_model=4096, d_kv=64, num_heads=64, d_ff=10240,
                        num_layers=2)
  model.save_pretrained(str(tmp_path))
  ids, mask = _batch(np.random.default_rng(7), (64, 40), 64, 256)
  want = _torch_hidden(model, ids, mask)
  del model
  err = np.abs(np.asarray(umt5.load(str(tmp_path))(ids, mask)) - want)[mask.astype(bool)].max()
  print(f"umt5 parity at XXL width: {err:.2e}")
  assert err <= ATOL, err
