"""Hugging Face checkpoints <-> (Decoder, params) for GPT-2, GPT-NeoX (Pythia) and Llama, both directions.

An export is a Hugging Face directory: config.json + model.safetensors (the standard tensors, all that
`transformers` reads) + the tokenizer. An SSA model adds its temperature tensors as `ssa.<param path>` in a
second file, ssa.safetensors, and an `ssa` block in config.json; `from_hf` reads both and restores the model
exactly, while transformers looks at neither (it loads the vanilla model, quietly). A model with an attention
method (config.model.attention_kind other than 'softmax', docs/methods.md) is refused: transformers would load it
without the method, as another model (without its gate every attention output changes).

CLI:  python -m ssa_jax.formats.hf import HF_DIR OUT_DIR     (HF checkpoint -> our model directory)
      python -m ssa_jax.formats.hf export CKPT_DIR HF_DIR    (our model directory or training checkpoint -> HF)
Export writes the tokenizer the checkpoint's run config names (data.tokenizer_path; --tokenizer=PATH to
choose another) into HF_DIR, so that `eval.py --hf_dir=HF_DIR` needs no --tokenizer; import records the HF
directory's tokenizer in the run config.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import tempfile
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from etils import epath
from flax import traverse_util
from safetensors.numpy import save_file

from ssa_jax.data.tokenizer import load_tokenizer, tokenizer_in
from ssa_jax.errors import ConfigError
from ssa_jax.formats import checkpoint
from ssa_jax.formats.safetensors_io import read_safetensors
from ssa_jax.formats.tokenizer_files import check_vocab, copy_tokenizer, run_config_tokenizer
from ssa_jax.model.config import ModelConfig, RopeScaling, SSAConfig, ssa_config_from_dict
from ssa_jax.model.decoder import BUFFERS, Decoder
from ssa_jax.model.params import init_variables, ssa_groups, stack_layers, unstack_layers, variable_shapes
from ssa_jax.runtime import cli_errors

ARCHITECTURES = {"GPT2LMHeadModel": "gpt2", "GPTNeoXForCausalLM": "neox", "LlamaForCausalLM": "llama"}
_HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "silu": "silu"}
# Non-parameter buffers some checkpoints carry.
_HF_BUFFERS = re.compile(r"(\.attn\.(masked_)?bias|\.attention\.(masked_)?bias|rotary_emb\.inv_freq)$")
SSA_PREFIX = "ssa."
SSA_FILE = "ssa.safetensors"  # beside model.safetensors; transformers reads only model.safetensors / its index


# ---------------------------------------------------------------------------------------------- config.json
def _rope_fields(hf: dict) -> tuple[float, float, RopeScaling | None]:
  """(theta, partial rotary fraction, llama3 scaling) from either transformers v4 or v5 config layouts."""
  params = dict(hf.get("rope_parameters") or {})
  theta = params.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
  pct = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", 1.0)))
  scaling = dict(hf.get("rope_scaling") or {}) or params
  rope_type = scaling.get("rope_type", scaling.get("type", "default"))
  if rope_type in ("default", None):
    return float(theta), float(pct), None
  if rope_type != "llama3":
    raise ConfigError(f"config.json: rope type {rope_type!r} is not supported (only default and llama3)")
  fields = {f.name for f in dataclasses.fields(RopeScaling)}
  return float(theta), float(pct), RopeScaling(**{k: v for k, v in scaling.items() if k in fields})


def config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
  """Our ModelConfig from a transformers config dict (v4 or v5 layout)."""
  arch = (hf.get("architectures") or [None])[0]
  family = ARCHITECTURES.get(arch)
  if family is None:
    raise ConfigError(f"{where}: architecture {arch!r} is not supported; expected one of {sorted(ARCHITECTURES)}")
  ssa = ssa_config_from_dict(hf["ssa"], where=f"{where}: ssa") if hf.get("ssa") else SSAConfig()
  if family == "gpt2":
    d = hf["n_embd"]
    act = hf.get("activation_function", "gelu_new")
    kw = dict(
        vocab_size=hf["vocab_size"], d_model=d, num_layers=hf["n_layer"], num_heads=hf["n_head"],
        mlp_dim=hf.get("n_inner") or 4 * d, max_seq_len=hf["n_positions"], norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=True, qkv_bias=True, out_bias=True, mlp_bias=True,
    )
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
      raise ConfigError(f"{where}: scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported")
  else:
    theta, pct, scaling = _rope_fields(hf)
    act = hf.get("hidden_act", "gelu" if family == "neox" else "silu")
    bias = bool(hf.get("attention_bias", family == "neox"))
    kw = dict(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"], mlp_dim=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048), rope_theta=theta, rotary_pct=pct, rope_scaling=scaling,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), qkv_bias=bias, out_bias=bias,
    )
    if family == "neox":
      kw.update(norm_eps=hf.get("layer_norm_eps", 1e-5), parallel_residual=bool(hf.get("use_parallel_residual", True)),
                mlp_bias=True)
    else:
      kw.update(norm_eps=hf.get("rms_norm_eps", 1e-6), num_kv_heads=hf.get("num_key_value_heads") or 0,
                head_dim=hf.get("head_dim") or 0, mlp_bias=bool(hf.get("mlp_bias", False)))
  if act not in _HF_ACTIVATIONS:
    raise ConfigError(f"{where}: activation {act!r} is not supported; expected one of {sorted(_HF_ACTIVATIONS)}")
  return ModelConfig(family=family, activation=_HF_ACTIVATIONS[act], ssa=ssa, **kw).validate(where)


def config_to_hf(cfg: ModelConfig) -> dict:
  """A config.json that transformers (v4 and v5) loads as the vanilla model; SSA rides in an `ssa` block."""
  act = {"gelu_tanh": "gelu_new" if cfg.family == "gpt2" else "gelu_pytorch_tanh", "gelu": "gelu", "silu": "silu"}
  if cfg.family == "gpt2":
    hf = dict(architectures=["GPT2LMHeadModel"], model_type="gpt2", vocab_size=cfg.vocab_size, n_embd=cfg.d_model,
              n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.mlp_dim, n_positions=cfg.max_seq_len,
              n_ctx=cfg.max_seq_len, layer_norm_epsilon=cfg.norm_eps, activation_function=act[cfg.activation],
              tie_word_embeddings=True, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
  else:
    rope: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    if cfg.rope_scaling is not None:
      rope.update(dataclasses.asdict(cfg.rope_scaling), rope_type="llama3")
    hf = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.num_layers,
              num_attention_heads=cfg.num_heads, intermediate_size=cfg.mlp_dim, max_position_embeddings=cfg.max_seq_len,
              hidden_act=act[cfg.activation], tie_word_embeddings=cfg.tie_embeddings, rope_theta=cfg.rope_theta,
              rope_scaling=rope if cfg.rope_scaling is not None else None, rope_parameters=rope,
              attention_bias=cfg.qkv_bias)
    if cfg.family == "neox":
      rope["partial_rotary_factor"] = cfg.rotary_pct
      hf.update(architectures=["GPTNeoXForCausalLM"], model_type="gpt_neox", rotary_pct=cfg.rotary_pct,
                rotary_emb_base=cfg.rope_theta, layer_norm_eps=cfg.norm_eps, use_parallel_residual=cfg.parallel_residual,
                hidden_dropout=0.0, attention_dropout=0.0)
    else:
      hf.update(architectures=["LlamaForCausalLM"], model_type="llama", num_key_value_heads=cfg.num_kv_heads,
                head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps, mlp_bias=cfg.mlp_bias)
  hf["torch_dtype"] = "float32"
  if cfg.ssa.enabled:
    hf["ssa"] = dataclasses.asdict(cfg.ssa)
  return hf


# -------------------------------------------------------------------------------------------- tensor mapping
class TensorMap(NamedTuple):
  """One HF tensor <-> one or more of our params. `to_ours(hf) -> [arrays]`, `to_hf([arrays]) -> hf`."""

  hf_key: str
  paths: tuple[tuple[str, ...], ...]
  to_ours: Callable[[np.ndarray], list[np.ndarray]]
  to_hf: Callable[[list[np.ndarray]], np.ndarray]


def _reshape(key, path, shape, hf_shape=None):
  """Same values on both sides (embeddings, norms, biases, GPT-2's Conv1D weights), reshaped; hf_shape: `shape`."""
  return TensorMap(key, (path,), lambda w: [w.reshape(shape)], lambda a: a[0].reshape(hf_shape or shape))


def _linear(key, path, shape, n_in_dims=1):
  """torch.nn.Linear weight (out, in) <-> our kernel (inputs..., outputs...), `n_in_dims` input dims."""
  n_in = int(np.prod(shape[:n_in_dims]))
  return TensorMap(key, (path,), lambda w: [w.T.reshape(shape)], lambda a: a[0].reshape(n_in, -1).T)


def _norm(key, path, d, bias=True):
  """A norm's `key`.weight (and .bias) <-> our `path` scale (and bias)."""
  parts = (("weight", "scale"), ("bias", "bias")) if bias else (("weight", "scale"),)
  return [_reshape(f"{key}.{theirs}", (*path, ours), (d,)) for theirs, ours in parts]


def _gpt2_maps(cfg: ModelConfig) -> list[TensorMap]:
  d, H, D, F = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.mlp_dim
  maps = [_reshape("transformer.wte.weight", ("embed", "embedding"), (cfg.vocab_size, d)),
          _reshape("transformer.wpe.weight", ("pos_embed", "embedding"), (cfg.max_seq_len, d))]
  for i in range(cfg.num_layers):
    h, L = f"transformer.h.{i}.", f"layers_{i}"
    maps += [
        *_norm(h + "ln_1", (L, "attn_norm"), d),
        TensorMap(h + "attn.c_attn.weight", tuple((L, "attn", c, "kernel") for c in "qkv"),
                  lambda w: [x.reshape(d, H, D) for x in np.split(w, 3, axis=1)],
                  lambda a: np.concatenate([x.reshape(d, d) for x in a], axis=1)),
        TensorMap(h + "attn.c_attn.bias", tuple((L, "attn", c, "bias") for c in "qkv"),
                  lambda w: [x.reshape(H, D) for x in np.split(w, 3)],
                  lambda a: np.concatenate([x.reshape(-1) for x in a])),
        _reshape(h + "attn.c_proj.weight", (L, "attn", "o", "kernel"), (H, D, d), (d, d)),
        _reshape(h + "attn.c_proj.bias", (L, "attn", "o", "bias"), (d,)),
        *_norm(h + "ln_2", (L, "mlp_norm"), d),
        _reshape(h + "mlp.c_fc.weight", (L, "mlp", "up", "kernel"), (d, F)),
        _reshape(h + "mlp.c_fc.bias", (L, "mlp", "up", "bias"), (F,)),
        _reshape(h + "mlp.c_proj.weight", (L, "mlp", "down", "kernel"), (F, d)),
        _reshape(h + "mlp.c_proj.bias", (L, "mlp", "down", "bias"), (d,)),
    ]
  return maps + _norm("transformer.ln_f", ("final_norm",), d)


def _neox_maps(cfg: ModelConfig) -> list[TensorMap]:
  d, H, D, F = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.mlp_dim
  maps = [_reshape("gpt_neox.embed_in.weight", ("embed", "embedding"), (cfg.vocab_size, d))]
  for i in range(cfg.num_layers):
    h, L = f"gpt_neox.layers.{i}.", f"layers_{i}"
    maps += [
        *_norm(h + "input_layernorm", (L, "attn_norm"), d),
        *_norm(h + "post_attention_layernorm", (L, "mlp_norm"), d),
        # The fused projection's outputs are laid out (head, [q|k|v], head_dim).
        TensorMap(h + "attention.query_key_value.weight", tuple((L, "attn", c, "kernel") for c in "qkv"),
                  lambda w: [w.T.reshape(d, H, 3, D)[:, :, j] for j in range(3)],
                  lambda a: np.stack(a, axis=2).reshape(d, 3 * d).T),
        _linear(h + "attention.dense.weight", (L, "attn", "o", "kernel"), (H, D, d), 2),
        _linear(h + "mlp.dense_h_to_4h.weight", (L, "mlp", "up", "kernel"), (d, F)),
        _reshape(h + "mlp.dense_h_to_4h.bias", (L, "mlp", "up", "bias"), (F,)),
        _linear(h + "mlp.dense_4h_to_h.weight", (L, "mlp", "down", "kernel"), (F, d)),
        _reshape(h + "mlp.dense_4h_to_h.bias", (L, "mlp", "down", "bias"), (d,)),
    ]
    if cfg.qkv_bias:
      maps += [TensorMap(h + "attention.query_key_value.bias", tuple((L, "attn", c, "bias") for c in "qkv"),
                         lambda w: [w.reshape(H, 3, D)[:, j] for j in range(3)],
                         lambda a: np.stack(a, axis=1).reshape(-1)),
               _reshape(h + "attention.dense.bias", (L, "attn", "o", "bias"), (d,))]
  maps += _norm("gpt_neox.final_layer_norm", ("final_norm",), d)
  if not cfg.tie_embeddings:
    maps.append(_linear("embed_out.weight", ("lm_head", "kernel"), (d, cfg.vocab_size)))
  return maps


def _llama_maps(cfg: ModelConfig) -> list[TensorMap]:
  d, H, K, D, F = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  maps = [_reshape("model.embed_tokens.weight", ("embed", "embedding"), (cfg.vocab_size, d))]
  for i in range(cfg.num_layers):
    h, L = f"model.layers.{i}.", f"layers_{i}"
    maps += [
        *_norm(h + "input_layernorm", (L, "attn_norm"), d, bias=False),
        *_norm(h + "post_attention_layernorm", (L, "mlp_norm"), d, bias=False),
        *[_linear(h + f"self_attn.{c}_proj.weight", (L, "attn", c, "kernel"), (d, n, D))
          for c, n in (("q", H), ("k", K), ("v", K))],
        _linear(h + "self_attn.o_proj.weight", (L, "attn", "o", "kernel"), (H, D, d), 2),
        *[_linear(h + f"mlp.{c}_proj.weight", (L, "mlp", c, "kernel"), (F, d) if c == "down" else (d, F))
          for c in ("gate", "up", "down")],
    ]
    if cfg.qkv_bias:
      maps += [_reshape(h + f"self_attn.{c}_proj.bias", (L, "attn", c, "bias"), (n, D), (-1,))
               for c, n in (("q", H), ("k", K), ("v", K))]
      maps.append(_reshape(h + "self_attn.o_proj.bias", (L, "attn", "o", "bias"), (d,)))
    if cfg.mlp_bias:
      maps += [_reshape(h + f"mlp.{c}_proj.bias", (L, "mlp", c, "bias"), (d if c == "down" else F,))
               for c in ("gate", "up", "down")]
  maps += _norm("model.norm", ("final_norm",), d, bias=False)
  if not cfg.tie_embeddings:
    maps.append(_linear("lm_head.weight", ("lm_head", "kernel"), (d, cfg.vocab_size)))
  return maps


def tensor_maps(cfg: ModelConfig) -> list[TensorMap]:
  """Every standard (non-SSA) tensor of the family's HF checkpoint and where it lives in our params."""
  return {"gpt2": _gpt2_maps, "neox": _neox_maps, "llama": _llama_maps}[cfg.family](cfg)


# -------------------------------------------------------------------------------------------------- loading
def is_training_workdir(path: epath.PathLike) -> bool:
  """True for an ssa-jax training workdir (checkpoints/, or a config.json holding a run config), not an HF dir."""
  path = epath.Path(path)
  if (path / "checkpoints").is_dir():
    return True
  config = path / "config.json"
  if not config.is_file():
    return False
  try:
    obj = json.loads(config.read_text())
  except ValueError:
    return False
  # A run config has model / train / data sections; a transformers config names its model_type.
  return isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "model_type" not in obj


def read_hf_config(hf_dir: epath.PathLike) -> dict:
  """config.json of a Hugging Face directory; a training workdir or a directory without one fails, named."""
  if is_training_workdir(hf_dir):
    raise ValueError(f"{hf_dir}: an ssa-jax training workdir (its config.json is a run config, its checkpoints "
                     "are in checkpoints/), not a Hugging Face directory; export it with "
                     f"`python -m ssa_jax.formats.hf export {hf_dir} HF_DIR`")
  if not epath.Path(hf_dir).is_dir():
    raise FileNotFoundError(f"{hf_dir}: no such directory; expected a Hugging Face checkpoint directory "
                            "(config.json + model.safetensors)")
  path = epath.Path(hf_dir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{hf_dir}: no config.json; expected a Hugging Face checkpoint directory")
  return json.loads(path.read_text())


def read_hf_tensors(hf_dir: epath.PathLike) -> dict[str, np.ndarray]:
  """The standard tensors: all of model.safetensors, or of the shards its index names."""
  hf_dir = epath.Path(hf_dir)
  index = hf_dir / "model.safetensors.index.json"
  if (hf_dir / "model.safetensors").exists():  # transformers' own order: the single file before an index
    files = ["model.safetensors"]
  elif index.exists():
    files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
  else:
    raise FileNotFoundError(
        f"{hf_dir}: no model.safetensors or model.safetensors.index.json (PyTorch .bin files are not read; "
        "convert them with transformers' save_pretrained(safe_serialization=True))")
  return {key: array for name in files for key, array in read_safetensors(hf_dir / name)}


def _ssa_file_paths(cfg: ModelConfig) -> list[tuple[str, ...]]:
  """The variables SSA_FILE holds, by path (collection first): SSA's parameters and the buffers (phi)."""
  buffers = traverse_util.flatten_dict(variable_shapes(cfg)[BUFFERS])
  return [("params", *p) for p in ssa_groups(cfg)] + [(BUFFERS, *p) for p in buffers]


def from_hf(hf_dir: epath.PathLike, ssa: SSAConfig | None = None, rng_seed: int = 0, **overrides):
  """(Decoder, variables) from a Hugging Face directory (config.json + safetensors), in float32.

  A checkpoint exported by `to_hf` from an SSA model restores its temperatures exactly. `ssa` adds SSA to a
  vanilla checkpoint (fine-tuning): its parameters are freshly initialised with seed `rng_seed`.
  `overrides` replace ModelConfig fields (e.g. dtype='bfloat16', remat='full', max_seq_len=...).
  """
  cfg = config_from_hf(read_hf_config(hf_dir), where=f"{hf_dir}/config.json")
  if ssa is not None:
    if cfg.ssa.enabled:
      raise ConfigError(f"{hf_dir}: checkpoint already has SSA ({cfg.ssa}); do not pass ssa=")
    overrides["ssa"] = ssa
  cfg = dataclasses.replace(cfg, **overrides).validate()
  scanned, cfg = cfg.scan_layers, dataclasses.replace(cfg, scan_layers=False)  # converted in the unrolled layout
  tensors = read_hf_tensors(hf_dir)
  if cfg.family == "gpt2":  # the original OpenAI GPT-2 checkpoints store GPT2Model keys without `transformer.`
    tensors = {k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k: v for k, v in tensors.items()}
  expected = traverse_util.flatten_dict(variable_shapes(cfg))  # paths start with the collection
  flat: dict[tuple[str, ...], np.ndarray] = {}
  used = set()
  for m in tensor_maps(cfg):
    if m.hf_key not in tensors:
      raise KeyError(f"{hf_dir}: missing tensor {m.hf_key!r} (architecture {cfg.family}, config.json says "
                     f"{cfg.num_layers} layers, tie_embeddings={cfg.tie_embeddings})")
    hf_arr = np.asarray(tensors[m.hf_key], dtype=np.float32)
    try:
      arrays = m.to_ours(hf_arr)
    except ValueError as e:
      raise ValueError(f"{hf_dir}: tensor {m.hf_key!r} has shape {hf_arr.shape}, which does not fit the config: {e}")
    for path, arr in zip(m.paths, arrays):
      if arr.shape != expected["params", *path].shape:
        raise ValueError(f"{hf_dir}: tensor {m.hf_key!r} gives shape {arr.shape} for {'/'.join(path)}, "
                         f"expected {expected['params', *path].shape}")
      flat["params", *path] = arr
    used.add(m.hf_key)

  ssa_paths = _ssa_file_paths(cfg)
  ssa_file = epath.Path(hf_dir) / SSA_FILE
  stored_ssa = dict(read_safetensors(ssa_file)) if ssa_file.exists() else {}
  if stored_ssa:
    if not cfg.ssa.enabled:
      raise ValueError(f"{hf_dir}: {SSA_FILE} present but config.json has no `ssa` block")
    for path in ssa_paths:
      key = SSA_PREFIX + ".".join(path[1:])
      if key not in stored_ssa:
        raise KeyError(f"{hf_dir}: missing SSA tensor {key!r} in {SSA_FILE}")
      flat[path] = np.asarray(stored_ssa[key], np.float32).reshape(expected[path].shape)
      used.add(key)
    tensors.update(stored_ssa)  # those left unused are named below
  elif ssa_paths:
    if ssa is None:
      raise KeyError(f"{hf_dir}: config.json has an `ssa` block but there is no {SSA_FILE} with its tensors")
    # A full init is cheap next to reading the checkpoint.
    fresh = traverse_util.flatten_dict(jax.device_get(init_variables(cfg, jax.random.PRNGKey(rng_seed))))
    flat.update({p: np.asarray(fresh[p]) for p in ssa_paths})

  leftover = sorted(k for k in tensors if k not in used and not _HF_BUFFERS.search(k))
  if leftover:
    print(f"[ssa_jax.formats.hf] warning: {len(leftover)} tensor(s) in {hf_dir} not used: {leftover[:8]}", file=sys.stderr)
  variables = {BUFFERS: {}, **traverse_util.unflatten_dict(flat)}
  if scanned:
    variables["params"] = jax.device_get(stack_layers(variables["params"], cfg.num_layers))
  return Decoder(dataclasses.replace(cfg, scan_layers=scanned)), variables


# -------------------------------------------------------------------------------------------------- export
def to_hf(model: Decoder | ModelConfig, variables: dict, out_dir: epath.PathLike) -> epath.Path:
  """Writes the Hugging Face directory of the module docstring; returns `out_dir`."""
  cfg = model.config if isinstance(model, Decoder) else model
  check_exportable(cfg)
  # transformers' layout is one module per layer
  variables = {**variables, "params": unstack_layers(variables["params"], cfg.num_layers)}
  ssa_paths = _ssa_file_paths(dataclasses.replace(cfg, scan_layers=False))
  flat = {p: np.asarray(jax.device_get(v), np.float32) for p, v in traverse_util.flatten_dict(variables).items()}
  tensors = {}
  for m in tensor_maps(cfg):
    absent = ["/".join(p) for p in m.paths if ("params", *p) not in flat]
    if absent:  # e.g. a GPT-NeoX config without biases: transformers' GPTNeoX always has them
      raise ValueError(f"to_hf: {cfg.family} checkpoint needs {m.hf_key}, but the params have no {absent[0]}; "
                       "the model config does not match what transformers' architecture expects")
    tensors[m.hf_key] = np.ascontiguousarray(m.to_hf([flat["params", *p] for p in m.paths]))
  ssa = {SSA_PREFIX + ".".join(p[1:]): v for p, v in flat.items() if p in ssa_paths}
  out_dir = epath.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2))
  _save(tensors, out_dir / "model.safetensors")
  if ssa:
    _save(ssa, out_dir / SSA_FILE)
    print(
        f"[ssa_jax.formats.hf] WARNING: {out_dir} holds an SSA model. transformers will load it as the VANILLA "
        f"{cfg.family} model (it reads model.safetensors only, not the {len(ssa)} temperature tensors in "
        f"{SSA_FILE}), so its outputs differ from this model's. Load it with ssa_jax.formats.hf.from_hf to keep SSA.",
        file=sys.stderr)
  elif (out_dir / SSA_FILE).exists():
    (out_dir / SSA_FILE).unlink()  # a vanilla export over an SSA one: from_hf must not find stale temperatures
  return out_dir


def check_exportable(cfg: ModelConfig) -> None:
  """Refuses a model that no stock transformers architecture computes: one with an attention method."""
  if cfg.attention_kind != "softmax":
    raise ConfigError(f"config.model.attention_kind: {cfg.attention_kind!r} has no stock transformers "
                      f"{cfg.family} architecture to export to (only 'softmax' exports); keep its ssa-jax checkpoint")


def _save(tensors: dict[str, np.ndarray], path: epath.Path) -> None:
  """One .safetensors file, local or gs:// (safetensors writes local files only)."""
  if "://" in str(path):
    with tempfile.TemporaryDirectory() as tmp:
      save_file(tensors, f"{tmp}/{path.name}", metadata={"format": "pt"})
      epath.Path(f"{tmp}/{path.name}").copy(path, overwrite=True)
  else:
    save_file(tensors, str(path), metadata={"format": "pt"})


# ------------------------------------------------------------------------------------------------------- CLI
def _export_tokenizer(run_config: dict, ckpt_dir: str, hf_dir: epath.PathLike, model_vocab: int,
                      override: str = "") -> str:
  """Copies the checkpoint's tokenizer (or `override`) into the export; returns what it did, for the console."""
  if override:  # a tokenizer that does not fit the model fails here, not at evaluation
    check_vocab(load_tokenizer(override), model_vocab)
  source = override or run_config_tokenizer(run_config)
  if not source or not epath.Path(source).exists():
    why = (f"the tokenizer {ckpt_dir} was trained with, {source}, does not exist here" if source else
           f"{ckpt_dir}'s run config names no tokenizer (config.data.tokenizer_path)")
    print(f"[ssa_jax.formats.hf] warning: {why}, so none was exported: pass --tokenizer=PATH here, or to eval.py",
          file=sys.stderr)
    return "no tokenizer"
  return f"tokenizer {', '.join(copy_tokenizer(source, hf_dir))} from {source}"


def main(argv: list[str]) -> int:
  """The command line; a user's mistake is one `error:` line and returns 2 (--verbosity=1: the traceback)."""
  parser = cli_errors.ArgumentParser(prog="python -m ssa_jax.formats.hf", description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True, parser_class=cli_errors.ArgumentParser)
  imp = sub.add_parser("import", help="HF checkpoint directory -> ssa-jax checkpoint directory")
  imp.add_argument("hf_dir")
  imp.add_argument("out_dir")
  exp = sub.add_parser("export", help="ssa-jax checkpoint (root, step dir or training workdir) -> HF directory")
  exp.add_argument("ckpt_dir")
  exp.add_argument("hf_dir")
  exp.add_argument("--tokenizer", default="", help="tokenizer to export (default: the run config's)")
  try:
    args = parser.parse_args(argv)
    if args.command == "import":
      model, variables = from_hf(args.hf_dir)
      run_config = {"init": {"hf_dir": str(args.hf_dir)}}
      tokenizer = tokenizer_in(epath.Path(args.hf_dir).absolute())
      if tokenizer:  # eval.py --checkpoint=OUT_DIR then finds it
        run_config["data"] = {"tokenizer_path": tokenizer}
      checkpoint.save_model(args.out_dir, model.config, variables, run_config=run_config)
      print(f"imported {args.hf_dir} ({model.config.family}) -> {args.out_dir}")
    else:
      model, variables, run_config = checkpoint.load_model(args.ckpt_dir)
      check_exportable(model.config)  # before the tokenizer is copied
      what = _export_tokenizer(run_config, args.ckpt_dir, args.hf_dir, model.config.vocab_size, args.tokenizer)
      to_hf(model, variables, args.hf_dir)
      print(f"exported {args.ckpt_dir} ({model.config.family}, {what}) -> {args.hf_dir}")
  except (cli_errors.UsageError, *cli_errors.PATH_AND_VALUE_ERRORS) as e:  # a user's mistake: one line
    if cli_errors.verbose_in_argv(argv):
      raise
    print(f"error: {cli_errors.message_of(e)}", file=sys.stderr)
    return cli_errors.USAGE_EXIT_CODE
  return 0


if __name__ == "__main__":
  cli_errors.run_argv(main)
