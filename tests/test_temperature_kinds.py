"""The temperature's token and position kinds against formulas written out, their gradients against central
differences, their starts per mode, and whether a fine-tune's optimizer can move them."""

import importlib.util
import itertools
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ssa_jax.errors import ConfigError
from ssa_jax.model.kernels import kernel_implementation
from ssa_jax.model.config import SSAConfig, model_config_from_dict
from ssa_jax.model.decoder import Decoder
from ssa_jax.model.params import init_variables, ssa_groups
from ssa_jax.model.temperature import Temperature
from ssa_jax.train.optim import make_optimizer
from tiny_models import random_buffers, tiny_config, with_random_temperatures

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
TOKEN_KINDS = ("mlp", "shared", "frequency")
POSITION_KINDS = ("log", "yarn", "constant", "ssmax", "llama4", "logn")


def load_config(name: str):
  spec = importlib.util.spec_from_file_location(f"config_{name}", CONFIG_DIR / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _temperature(ssa: SSAConfig, component="q", heads=4, max_seq_len=2048, d=16, positions=None):
  module = Temperature(ssa, num_heads=heads, d_model=d, max_seq_len=max_seq_len, component=component)
  positions = np.array([[0, 99, max_seq_len - 1]]) if positions is None else np.asarray(positions)[None]
  T = positions.shape[1]
  x = np.random.default_rng(0).normal(size=(1, T, d)).astype(np.float32)
  proj = np.random.default_rng(1).normal(size=(1, T, heads, 4)).astype(np.float32)  # the layer's projection
  params = module.init(jax.random.PRNGKey(0), x, positions, proj).get("params", {})
  params = jax.tree_util.tree_map(lambda a: getattr(a, "value", a), params, is_leaf=lambda a: hasattr(a, "value"))
  return module, params, x, positions


# ------------------------------------------------------------------------------------------- starting values
@pytest.mark.parametrize("config_name,at_end,window", [
    ("pythia160m_ssa", 1.1, 2048), ("pythia160m_ssa_ft", 1.001, 2048), ("pythia160m_ssa_ws_ft", 1.001, 2048),
    ("tiny_ssa", 1.1, 128),  # the demo trains on 128 of its 256 positions
    ("llama2_7b_ssa_ft", 1.001, 2048), ("llama31_8b_ssa_ft", 1.001, 2048)])  # 2048 of 4096 / 131072
def test_initial_tau_is_pinned_at_the_end_of_the_training_window(config_name, at_end, window):
  config = load_config(config_name)
  assert config.train.seq_len == window
  model_cfg = model_config_from_dict(config.model)
  assert model_cfg.ssa.position_reference_len == window
  module, params, x, positions = _temperature(model_cfg.ssa, max_seq_len=model_cfg.max_seq_len,
                                              positions=[0, 99, window - 1, model_cfg.max_seq_len - 1])
  tau = np.asarray(module.apply({"params": params}, x, positions, np.ones((1, 4, 4, 4), np.float32)))
  # The token term starts at tanh(0) = 0, so tau is the position term: 1 at n = 1, `at_end` at n = the window.
  np.testing.assert_allclose(tau[0, 0], 1.0, rtol=1e-6)
  np.testing.assert_allclose(tau[0, 2], at_end, rtol=1e-6)
  assert np.all(tau[0, 1] > 1.0) and np.all(tau[0, 1] < at_end)
  n_max = model_cfg.max_seq_len
  np.testing.assert_allclose(tau[0, 3], 1.0 + (at_end - 1.0) * math.log(n_max) / math.log(window), rtol=1e-6)


def test_position_reference_len_follows_the_training_window_unless_set():
  config = load_config("tiny_ssa")
  config.train.seq_len = 64  # as --config.train.seq_len=64 would
  assert config.model.ssa.position_reference_len == 64
  config.model.ssa.position_reference_len = 200  # set itself: the training window stays
  assert (config.train.seq_len, config.model.ssa.position_reference_len) == (64, 200)


def test_ssmax_starts_at_the_configured_end_value():
  ssa = SSAConfig(enabled=True, token=False, position_kind="ssmax", value=False, position_tau_at_end=1.1)
  module, params, x, positions = _temperature(ssa)
  tau = np.asarray(module.apply({"params": params}, x, positions))
  np.testing.assert_allclose(tau[0, :, 0], np.log([1, 100, 2048]) * 1.1 / math.log(2048), rtol=1e-5)


def test_ssmax_has_no_near_identity_start_and_says_so():
  # SSMax's tau_q = s log n has no "1 +": pinned at 1.001 at n = 2048 it is 0.09 at n = 2 and 0.55 at n = 64.
  ssa = model_config_from_dict(load_config("pythia160m_ssa_ft").model).ssa
  ssa = SSAConfig(**{**ssa.__dict__, "position_kind": "ssmax"})
  start = ssa.ssmax_start(2048)
  assert start == pytest.approx({2: 0.0908, 64: 0.5458, 2048: 1.001}, abs=5e-4)
  module, params, x, positions = _temperature(ssa, positions=[1, 63, 2047])
  tau = np.asarray(module.apply({"params": params}, x, positions, np.ones((1, 3, 4, 4), np.float32)))
  np.testing.assert_allclose(tau[0, :, 0], [start[2], start[64], start[2048]], rtol=1e-5)


# ------------------------------------------------------------------------------- kinds against the formulas
def _softplus(a):
  return np.log1p(np.exp(a))


@pytest.mark.parametrize("position_kind", POSITION_KINDS)
def test_position_kinds_equal_their_formulas(position_kind):
  ssa = SSAConfig(enabled=True, token=False, position_kind=position_kind, value=False, yarn_scale=0.25,
                  llama4_floor_scale=50.0, llama4_attn_scale=0.3)
  module, params, x, positions = _temperature(ssa)
  rng = np.random.default_rng(3)
  params = {k: jnp.asarray(rng.normal(size=v.shape), jnp.float32) for k, v in params.items()}
  tau_TH = np.asarray(module.apply({"params": params}, x, positions))[0]
  n_T1 = (positions[0] + 1.0)[:, None]
  p = {k: np.asarray(v, np.float64)[None] for k, v in params.items()}
  expected = {
      "log": lambda: 1.0 + np.log(n_T1) / (1.0 + np.exp(-p["alpha"])),
      "yarn": lambda: np.broadcast_to((1.0 + 0.25 * np.log(n_T1)) ** 2, (3, 4)),
      "constant": lambda: np.broadcast_to(np.exp(p["log_tau"]), (3, 4)),
      "ssmax": lambda: _softplus(p["ssmax_s"]) * np.log(n_T1),  # Scalable-Softmax: no "1 +"
      "llama4": lambda: np.broadcast_to(np.log(np.floor(n_T1 / 50.0) + 1.0) * 0.3 + 1.0, (3, 4)),
      "logn": lambda: np.ones((3, 4)),  # every n of the test is within the training length
  }[position_kind]()
  np.testing.assert_allclose(tau_TH, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 64, 2048, 32768])
def test_yarn_gives_the_logits_yarns_factor(n):
  # YaRN: q and k each times sqrt(1/t) = 0.1 ln s + 1, so the logits times (0.1 ln s + 1)^2; s read as n.
  # At n = 2048 that is 3.11 (the query-only 1 + 0.1 ln n of before gave 1.76).
  ssa = SSAConfig(enabled=True, token=False, position_kind="yarn", value=False)
  module, params, x, positions = _temperature(ssa, max_seq_len=32768, positions=[n - 1])
  tau = float(np.asarray(module.apply({"params": params}, x, positions))[0, 0, 0])
  assert tau == pytest.approx((0.1 * math.log(n) + 1.0) ** 2, rel=1e-6)
  if n == 2048:
    assert tau == pytest.approx(3.11, abs=0.005)


@pytest.mark.parametrize("floor_scale,n", [(4.0, 1), (4.0, 3), (4.0, 4), (4.0, 7), (4.0, 8), (4.0, 12), (4.0, 100),
                                           (8192.0, 2048), (8192.0, 8191), (8192.0, 8192), (8192.0, 20000)])
def test_llama4_temperature_tuning_equals_its_formula(floor_scale, n):
  # transformers' Llama4: log(floor((cache_position + 1) / floor_scale) + 1) * attn_scale + 1, query only;
  # constant 1 until n reaches floor_scale, then a step at every multiple of it.
  ssa = SSAConfig(enabled=True, token=False, position_kind="llama4", value=False, llama4_floor_scale=floor_scale)
  module, params, x, positions = _temperature(ssa, max_seq_len=32768, positions=[n - 1])
  assert params == {}  # nothing learned
  tau = float(np.asarray(module.apply({"params": params}, x, positions))[0, 0, 0])
  assert tau == pytest.approx(math.log(math.floor(n / floor_scale) + 1.0) * 0.1 + 1.0, rel=1e-6)
  assert (tau == 1.0) == (n < floor_scale)


@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 64, 1000])
def test_logn_is_qwens_log_n_scaling(n):
  # Qwen's modeling_qwen.py: logn_list = [math.log(i, seq_length) if i > seq_length else 1 for i in range(1, ...)],
  # the query times logn_list[n - 1]; here seq_length is position_reference_len.
  ssa = SSAConfig(enabled=True, token=False, position_kind="logn", value=False, position_reference_len=16)
  module, params, x, positions = _temperature(ssa, max_seq_len=1024, positions=[n - 1])
  assert params == {}  # nothing learned
  tau = float(np.asarray(module.apply({"params": params}, x, positions))[0, 0, 0])
  assert tau == pytest.approx(math.log(n, 16) if n > 16 else 1, rel=1e-6)


def test_llama4_defaults_are_transformers_published_ones():
  ssa = SSAConfig()
  assert (ssa.llama4_floor_scale, ssa.llama4_attn_scale) == (8192.0, 0.1)


@pytest.mark.parametrize("position_kind", ["yarn", "constant", "ssmax", "llama4", "logn"])
def test_query_only_position_kinds_leave_the_value_its_token_term(position_kind):
  # tau_v = 1 + tanh(f_v(x)): the position term is the constant 1 for v, whatever the query gets.
  ssa = SSAConfig(enabled=True, token_kind="mlp", position_kind=position_kind)
  module, params, x, positions = _temperature(ssa, component="v", d=8)
  assert set(params) == {"w1", "w2"}  # no position parameter for v
  rng = np.random.default_rng(4)
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), params)
  tau = np.asarray(module.apply({"params": params}, x, positions))[0]
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  h = x[0].astype(np.float64) @ p["w1"]["kernel"] + p["w1"]["bias"]
  gelu = 0.5 * h * (1.0 + np.vectorize(math.erf)(h / math.sqrt(2.0)))
  np.testing.assert_allclose(tau, 1.0 + np.tanh(gelu @ p["w2"]["kernel"] + p["w2"]["bias"]), rtol=1e-5, atol=1e-6)


def test_frequency_token_term_looks_up_each_tokens_own_feature():
  cfg = tiny_config("neox", enabled=True, token_kind="frequency", value=False)
  params = init_variables(cfg, jax.random.PRNGKey(0))["params"]
  rng = np.random.default_rng(5)
  phi_V = rng.normal(size=cfg.vocab_size).astype(np.float32)  # a different phi for every token
  betas = {}
  for i in range(cfg.num_layers):
    betas[i] = rng.normal(size=cfg.num_heads).astype(np.float32)
    params[f"layers_{i}"]["attn"]["ssa_q"]["beta"] = jnp.asarray(betas[i])
  tokens = rng.integers(0, cfg.vocab_size, (2, 10))
  variables = {"params": params, "buffers": {"token_feature": jnp.asarray(phi_V)}}
  _, state = Decoder(cfg).apply(variables, tokens, mutable=["intermediates"])
  n = np.arange(1, 11, dtype=np.float64)[None, :, None]
  for i in range(cfg.num_layers):
    alpha = np.asarray(params[f"layers_{i}"]["attn"]["ssa_q"]["alpha"], np.float64)
    expected = np.tanh(betas[i][None, None, :] * phi_V[tokens][..., None]) + 1.0 + np.log(n) / (1 + np.exp(-alpha))
    sown = np.asarray(state["intermediates"][f"layers_{i}"]["attn"]["tau_q"][0])
    np.testing.assert_allclose(sown, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------- gradients vs central differences
@pytest.mark.parametrize("token_kind,position_kind", list(itertools.product(TOKEN_KINDS, POSITION_KINDS)))
def test_temperature_gradients_match_central_differences(token_kind, position_kind):
  cfg = tiny_config("llama", enabled=True, token_kind=token_kind, position_kind=position_kind)
  params = with_random_temperatures(init_variables(cfg, jax.random.PRNGKey(0))["params"], seed=7)
  buffers = random_buffers(cfg, seed=8)
  tokens = np.random.default_rng(9).integers(0, cfg.vocab_size, (2, 12))

  @jax.jit
  def loss(p):
    logits = Decoder(cfg).apply({"params": p, "buffers": buffers}, tokens[:, :-1])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))

  flat = traverse_util.flatten_dict(params)
  temps = list(ssa_groups(cfg))
  rng = np.random.default_rng(10)
  direction = {k: rng.normal(size=flat[k].shape).astype(np.float32) for k in temps}
  grads = traverse_util.flatten_dict(jax.grad(loss)(params))
  analytic = sum(float(np.sum(np.asarray(grads[k]) * direction[k])) for k in temps)
  eps = 1e-2

  def shifted(sign):
    return traverse_util.unflatten_dict({k: v + sign * eps * direction[k] if k in direction else v
                                         for k, v in flat.items()})

  numeric = (float(loss(shifted(1.0))) - float(loss(shifted(-1.0)))) / (2 * eps)
  assert abs(analytic) > 1e-4, "the temperatures do not reach the loss"
  assert numeric == pytest.approx(analytic, rel=2e-2, abs=2e-4)


# --------------------------------------------------------------------------- fine-tuning can move scalars
def _moved_under_finetune_optimizer(name: str, ssa_fields: dict, sign: float, multiplier=None):
  """Final / initial value of one learned scalar after the fine-tune schedule under a steady gradient."""
  config = load_config("pythia160m_ssa_ft")
  train = config.train
  if multiplier is not None:
    train.temperature_scalar_lr_multiplier = multiplier
  fields = {**config.model.ssa.to_dict(), **ssa_fields}
  cfg = tiny_config("neox", max_seq_len=config.model.max_seq_len, **fields)
  params = init_variables(cfg, jax.random.PRNGKey(0))["params"]
  tx = make_optimizer(train, params, cfg)
  opt_state = tx.init(params)
  # A steady push on every copy of the scalar, nothing else (a loss that keeps asking for more or less of it).
  grads = jax.tree_util.tree_map_with_path(
      lambda path, p: jnp.full_like(p, sign) if getattr(path[-1], "key", "") == name else jnp.zeros_like(p), params)

  @jax.jit
  def step(params, opt_state):
    updates, opt_state = tx.update(grads, opt_state, params)
    return jax.tree_util.tree_map(lambda p, u: p + u, params, updates), opt_state

  value = {"alpha": jax.nn.sigmoid, "ssmax_s": jax.nn.softplus, "log_tau": jnp.exp, "beta": lambda b: b}[name]
  before = float(value(params["layers_0"]["attn"]["ssa_q"][name][0]))
  for _ in range(train.steps):
    params, opt_state = step(params, opt_state)
  after = float(value(params["layers_0"]["attn"]["ssa_q"][name][0]))
  return before, after


@pytest.mark.parametrize("name,fields", [("alpha", {}), ("ssmax_s", {"position_kind": "ssmax"}),
                                         ("log_tau", {"position_kind": "constant"})])
def test_finetune_schedule_can_change_a_position_coefficient_twofold(name, fields):
  grow_before, grow_after = _moved_under_finetune_optimizer(name, fields, sign=-1.0)
  shrink_before, shrink_after = _moved_under_finetune_optimizer(name, fields, sign=+1.0)
  assert grow_after >= 2.0 * grow_before
  assert shrink_after <= 0.5 * shrink_before


def test_finetune_schedule_moves_the_frequency_beta_to_order_one():
  _, after = _moved_under_finetune_optimizer("beta", {"token_kind": "frequency"}, sign=-1.0)
  assert after >= 0.5  # tanh(0.5 phi): a token one std more frequent moves tau by about 0.46


def test_without_the_scalar_multiplier_the_paper_lr_cannot_move_alpha():
  # Why the fine-tune configs carry temperature_scalar_lr_multiplier: at lr 1e-6 alone the coefficient stays put.
  before, after = _moved_under_finetune_optimizer("alpha", {}, sign=-1.0, multiplier=1.0)
  assert after / before < 1.001


def test_finetune_configs_use_the_papers_optimizer_settings():
  train = load_config("pythia160m_ssa_ft").train
  assert (train.lr, train.warmup_steps, train.weight_decay, train.b1, train.b2) == (1e-6, 0, 0.0, 0.9, 0.95)
  assert train.schedule == "constant"
  assert train.steps * train.global_batch_size * train.seq_len == pytest.approx(3.5e6, rel=0.01)


# ------------------------------------------------------------------------------------ config combinations
@pytest.mark.parametrize("fields,message", [
    (dict(token=False, position_kind="yarn"), "config.model.ssa.value: scales v by the constant 1"),
    (dict(token=False, position_kind="constant", value=False, key=True), "config.model.ssa.key"),
    (dict(query=False, position_kind="ssmax"), "config.model.ssa.position_kind: 'ssmax' is a query"),
    (dict(position_kind="alibi"), "config.model.ssa.position_kind: unknown"),
    (dict(token_kind="base"), "config.model.ssa.token_kind: unknown"),
    (dict(weight_sharing_scope="model"), "config.model.ssa.weight_sharing_scope"),
    (dict(token=False, position=False), "config.model.ssa.token: SSA is enabled with both"),
    (dict(variant="weight_sharing"), "config.model.ssa: unknown field(s) ['variant']"),
])
def test_meaningless_combinations_are_rejected_naming_the_field(fields, message):
  d = dict(family="neox", vocab_size=64, d_model=32, num_layers=2, num_heads=4, mlp_dim=48, max_seq_len=32,
           ssa=dict(enabled=True, **fields))
  with pytest.raises(ConfigError, match=re.escape(message)):
    model_config_from_dict(d)


@pytest.mark.parametrize("dtype,backend,expected", [
    ("float32", "gpu", "xla"), ("bfloat16", "gpu", "cudnn"), ("float16", "gpu", "cudnn"),
    ("bfloat16", "cpu", "xla"), ("bfloat16", "tpu", "splash"), ("float32", "cpu", "xla"),
])
def test_auto_attention_kernel_is_chosen_by_backend_and_dtype(dtype, backend, expected):
  cfg = tiny_config("neox")
  import dataclasses

  assert kernel_implementation(dataclasses.replace(cfg, dtype=dtype), backend=backend) == expected


def test_cudnn_with_float32_fails_at_validation():
  d = dict(family="neox", vocab_size=64, d_model=32, num_layers=2, num_heads=4, mlp_dim=48, max_seq_len=32,
           attention_impl="cudnn", dtype="float32")
  with pytest.raises(ConfigError, match=r"config\.model\.attention_impl: 'cudnn' takes bfloat16 / float16"):
    model_config_from_dict(d)


def test_demo_config_does_not_ask_for_cudnn_on_any_backend():
  cfg = model_config_from_dict(load_config("tiny_ssa").model)
  assert kernel_implementation(cfg, backend="gpu") == "xla"  # the demo computes in float32


@pytest.mark.parametrize("row,token_kind,position_kind", [
    ("token_yarn", "mlp", "yarn"), ("token_constant", "mlp", "constant"),
    ("position_frequency", "frequency", "log")])
def test_table8_rows_are_one_config_each(row, token_kind, position_kind):
  config = load_config(f"tiny_table8_{row}")
  cfg = model_config_from_dict(config.model)
  assert (cfg.ssa.token_kind, cfg.ssa.position_kind, cfg.ssa.token, cfg.ssa.position) == (
      token_kind, position_kind, True, True)
  assert cfg.ssa.components == ("q", "v")
  assert (cfg.ssa.feature_path == "demo") == (row == "position_frequency")


def _dot_generals(jaxpr, found):
  """Every dot_general in `jaxpr` and the jaxprs nested in its equations (pjit, custom_jvp, remat...)."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      found.append(eqn)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", None)
        if inner is not None:
          _dot_generals(inner if hasattr(inner, "eqns") else inner.jaxpr, found)
  return found


@pytest.mark.parametrize("token_kind", TOKEN_KINDS)
def test_bf16_model_runs_every_matmul_in_bf16_including_the_temperatures(token_kind):
  # docs/ssa.md: an fp32 temperature matmul made SSA base 1.22x vanilla's step on an H100. Temperatures accumulate
  # in float32 (preferred_element_type) but their operands are in the compute dtype.
  import dataclasses

  cfg = dataclasses.replace(tiny_config("neox", enabled=True, token_kind=token_kind), dtype="bfloat16")
  variables = init_variables(cfg, jax.random.PRNGKey(0))
  jaxpr = jax.make_jaxpr(Decoder(cfg).apply)(variables, jnp.zeros((2, 8), jnp.int32))
  dots = _dot_generals(jaxpr.jaxpr, [])
  assert len(dots) >= 4 * cfg.num_layers
  for eqn in dots:
    assert [str(v.aval.dtype) for v in eqn.invars] == ["bfloat16", "bfloat16"], eqn
  # The temperature's last matmul gives one value per token per head: (B, T, H) in float32.
  temperature_dots = [e for e in dots if e.params.get("preferred_element_type") == jnp.float32
                      and e.outvars[0].aval.shape == (2, 8, cfg.num_heads)]
  if token_kind != "frequency":
    assert temperature_dots, "the temperature matmuls accumulate in float32"
