"""Model files: presets, our checkpoints, released .model/.weights (restricted unpickler, strict loads, export)."""

from __future__ import annotations

import json
import pickle
import sys
import types

import pytest
import torch
import yaml

from vpt_ray.config import ConfigError, from_dict
from vpt_ray.models import (
    InverseDynamicsModel,
    ModelConfig,
    OfficialFileError,
    VPTPolicy,
    WeightsError,
    build_model,
    config_from_official,
    export_official,
    load_checkpoint,
    load_official,
    load_preset,
    read_model_file,
    save_checkpoint,
)
from vpt_ray.models.config import PRESET_DIR

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def official_configs(reference_dir):
    pol = json.loads((reference_dir / "foundation" / "config.json").read_text())
    idm = json.loads((reference_dir / "idm" / "config.json").read_text())
    return {
        "policy": (pol["policy_kwargs"], pol["pi_head_kwargs"], reference_dir / "foundation"),
        "idm": (idm["idm_net_kwargs"], idm["pi_head_kwargs"], reference_dir / "idm"),
    }


def write_released_files(tmp_path, kwargs, pi_head, source_dir, extra=None):
    """A .model file in the released layout (plain types) and the reference state dict as .weights."""
    data = {"model": {"args": {"net": {"args": kwargs}, "pi_head_opts": pi_head}}, **(extra or {})}
    model_path, weights_path = tmp_path / "m.model", tmp_path / "m.weights"
    model_path.write_bytes(pickle.dumps(data, protocol=4))
    weights_path.write_bytes((source_dir / "state_dict.pt").read_bytes())
    return model_path, weights_path


def outputs(model, seed=0):
    h, w, _ = model.config.net.img_shape
    x = torch.randint(0, 256, (2, 5, h, w, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    with torch.no_grad():
        if isinstance(model, VPTPolicy):
            out = model(x, torch.zeros(2, 5, dtype=torch.bool))
            return {**out.logprobs, "vpred": out.vpred, "value": out.value}
        return model(x)


def assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    oa, ob = outputs(a), outputs(b)
    assert all(torch.equal(oa[k], ob[k]) for k in oa)


# ------------------------------------------------------------------------------------------------ presets
@pytest.mark.parametrize("name", ["vpt-1x", "vpt-2x", "vpt-3x", "idm-4x", "crafter-policy-small", "crafter-idm-small"])
def test_presets_load_with_released_sizes(name):
    cfg = load_preset(name)
    with torch.device("meta"):
        model = build_model(cfg)
    n = sum(v.numel() for v in model.state_dict().values())
    expected = {"vpt-1x": (70e6, 72e6), "vpt-2x": (247e6, 250e6), "vpt-3x": (0.5e9, 0.55e9),
                "idm-4x": (482_330_046, 482_330_046), "crafter-policy-small": (1e6, 3e6),
                "crafter-idm-small": (1e6, 3e6)}[name]  # fmt: skip
    assert expected[0] <= n <= expected[1], n
    assert load_preset(PRESET_DIR / f"{name}.yaml") == cfg


def test_released_1x_kwargs_match_preset():
    cfg = load_preset("vpt-1x")
    assert (cfg.net.hidsize, cfg.net.impala_width, cfg.net.attention_heads, cfg.net.n_recurrence_layers) == (1024, 4, 8, 4)
    assert (cfg.net.maxlen, cfg.net.timesteps, cfg.temperature) == (128, 128, 2.0)


def test_preset_errors_name_file_and_field(tmp_path):
    with pytest.raises(ConfigError, match="no such preset"):
        load_preset("vpt-9x")
    data = yaml.safe_load((PRESET_DIR / "crafter-policy-small.yaml").read_text())
    data["net"]["attention_heads"] = 7
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"bad.yaml: field 'net': hidsize 256 must be a positive multiple of attention_heads 7"):
        load_preset(bad)
    data["net"]["attention_heads"] = 4
    data["net"]["hidsize"] = "big"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"bad.yaml: field 'net.hidsize': expected an integer"):
        load_preset(bad)
    data["net"]["hidsize"] = 256
    data["net"]["attention_memory_size"] = 32  # == timesteps: no memory, not allowed for clipped_causal
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="clipped_causal attention needs attention_memory_size > timesteps"):
        load_preset(bad)


def test_official_kwargs_unknown_field_is_named(official_configs):
    kwargs, pi_head, _ = official_configs["policy"]
    with pytest.raises(ConfigError, match=r"field 'net.hidsizee': unknown field"):
        config_from_official({**kwargs, "hidsizee": 3}, 1.0, "policy")


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_with_aux_head(tmp_path):
    torch.manual_seed(0)
    model = build_model(load_preset("crafter-policy-small"))
    model.reset_value_heads_for_rl(generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.value_normalizer.update(torch.tensor([1.0, 3.0]))
    save_checkpoint(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["model.yaml", "weights.pt"]
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == model.config and loaded.aux_value_head is not None and not loaded.training
    assert_same_model(model.eval(), loaded)


def test_checkpoint_idm_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model(load_preset("crafter-idm-small")).eval()
    loaded = load_checkpoint(save_checkpoint(model, tmp_path))
    assert isinstance(loaded, InverseDynamicsModel)
    assert_same_model(model, loaded)


def test_checkpoint_strict_errors(tmp_path):
    model = build_model(load_preset("crafter-policy-small"))
    save_checkpoint(model, tmp_path)
    sd = torch.load(tmp_path / "weights.pt", weights_only=True)
    sd.pop("net.final_ln.bias")
    sd["net.extra.weight"] = torch.zeros(1)
    sd["value_head.linear.weight"] = torch.zeros(2, 256)
    torch.save(sd, tmp_path / "weights.pt")
    with pytest.raises(WeightsError) as e:
        load_checkpoint(tmp_path)
    msg = str(e.value)
    assert "weights.pt" in msg and "missing ['net.final_ln.bias']" in msg and "unexpected ['net.extra.weight']" in msg
    assert "value_head.linear.weight: file [2, 256] vs model [1, 256]" in msg
    (tmp_path / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="not a loadable weights file"):
        load_checkpoint(tmp_path)
    (tmp_path / "model.yaml").write_text("kind: policy\naction_space: crafter\nnet: {img_shape: [1, 2]}\n")
    with pytest.raises(ConfigError, match=r"model.yaml: field 'net.img_shape': expected 3 items"):
        load_checkpoint(tmp_path)


# ------------------------------------------------------------------------------------- released file format
@pytest.mark.parametrize("kind", ["policy", "idm"])
def test_load_official_reads_released_layout(tmp_path, official_configs, kind):
    kwargs, pi_head, source = official_configs[kind]
    model_path, weights_path = write_released_files(tmp_path, kwargs, pi_head, source)
    model = load_official(model_path, weights_path)
    assert isinstance(model, VPTPolicy if kind == "policy" else InverseDynamicsModel)
    assert model.config.temperature == pi_head["temperature"] and not model.training
    reference = torch.load(source / "state_dict.pt", weights_only=True)
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kind", ["policy", "idm"])
def test_export_then_load_official_round_trip(tmp_path, official_configs, kind):
    kwargs, pi_head, source = official_configs[kind]
    model = build_model(config_from_official(kwargs, pi_head["temperature"], kind)).eval()
    model.load_state_dict(torch.load(source / "state_dict.pt", weights_only=True))
    export_official(model, tmp_path / "x.model", tmp_path / "x.weights")

    # Plain types only: a loader that refuses every global reads it.
    class NoGlobals(pickle.Unpickler):
        def find_class(self, module, name):
            raise AssertionError(f"global {module}.{name} in exported file")

    with open(tmp_path / "x.model", "rb") as f:
        data = NoGlobals(f).load()
    net_kwargs = data["model"]["args"]["net"]["args"]
    assert data["model"]["args"]["pi_head_opts"] == {"temperature": float(pi_head["temperature"])}
    # Every kwarg the released file gave is written back with the same value (plus defaults spelled out).
    for key, value in kwargs.items():
        if key not in ("only_img_input", "diff_mlp_embedding"):
            assert net_kwargs[key] == value, key
    weights = torch.load(tmp_path / "x.weights", weights_only=True)
    assert list(weights) == list(model.state_dict())
    assert_same_model(model, load_official(tmp_path / "x.model", tmp_path / "x.weights"))


def test_export_refuses_crafter_models(tmp_path):
    model = build_model(load_preset("crafter-policy-small"))
    with pytest.raises(ValueError, match="only has the minecraft action space"):
        export_official(model, tmp_path / "a.model", tmp_path / "a.weights")


def test_restricted_unpickler_refuses_globals_without_running_them(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    (tmp_path / "evil.model").write_bytes(payload)
    with pytest.raises(OfficialFileError, match=r"evil.model: refused: forbidden global os.system"):
        read_model_file(tmp_path / "evil.model")
    assert not marker.exists()
    (tmp_path / "eval.model").write_bytes(pickle.dumps({"model": eval}))
    with pytest.raises(OfficialFileError, match="forbidden global builtins.eval"):
        read_model_file(tmp_path / "eval.model")
    (tmp_path / "junk.model").write_bytes(b"\x80\x04junk")
    with pytest.raises(OfficialFileError, match="not a readable .model pickle"):
        read_model_file(tmp_path / "junk.model")


def test_released_idm_model_file_with_gym3_spaces_is_read_inertly(tmp_path, official_configs, monkeypatch):
    """The released 4x_idm.model carries gym3 space objects in extra_args: they load as inert records."""
    fake = types.ModuleType("gym3.types")

    class Discrete:
        def __init__(self, n):
            self.n = n

    Discrete.__module__, Discrete.__qualname__ = "gym3.types", "Discrete"
    fake.Discrete = Discrete
    monkeypatch.setitem(sys.modules, "gym3", types.ModuleType("gym3"))
    monkeypatch.setitem(sys.modules, "gym3.types", fake)
    kwargs, pi_head, source = official_configs["idm"]
    extra = {"version": 1361, "extra_args": {"ac_space": {"buttons": Discrete(2)}}}
    model_path, weights_path = write_released_files(tmp_path, kwargs, {"temperature": 1}, source, extra)
    monkeypatch.delitem(sys.modules, "gym3.types")
    monkeypatch.delitem(sys.modules, "gym3")
    data = read_model_file(model_path)
    record = data["extra_args"]["ac_space"]["buttons"]
    assert record.type_name == "gym3.types.Discrete" and record.state == {"n": 2}
    model = load_official(model_path, weights_path)
    assert isinstance(model, InverseDynamicsModel) and model.config.temperature == 1.0


def test_load_official_errors_name_the_file(tmp_path, official_configs):
    kwargs, pi_head, source = official_configs["policy"]
    (tmp_path / "layout.model").write_bytes(pickle.dumps({"model": {"args": {"net": {}}}}))
    with pytest.raises(OfficialFileError, match=r"layout.model: missing 'model.args.net.args'"):
        load_official(tmp_path / "layout.model", source / "state_dict.pt")
    model_path, weights_path = write_released_files(tmp_path, {**kwargs, "hidsize": 32}, pi_head, source)
    with pytest.raises(WeightsError, match=r"m.weights: weights do not fit the model: shape mismatch"):
        load_official(model_path, weights_path)
    model_path, _ = write_released_files(tmp_path, {**kwargs, "recurrence_type": "lstm"}, pi_head, source)
    with pytest.raises(OfficialFileError, match=r"m.model: model.args.net.args: field 'net'.*recurrence_type 'lstm'"):
        load_official(model_path, weights_path)


def test_from_dict_round_trip_of_config():
    cfg = load_preset("idm-4x")
    from vpt_ray.config import to_dict

    assert from_dict(ModelConfig, to_dict(cfg)) == cfg
