"""fin3r.lora: exactness at init, re-normalisation maths, merging, gradients, adapter files,
and import of released Fin3R PEFT adapters. References are written out independently here."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fin3r.errors import CheckpointError
from fin3r.lora import (
    MODES,
    LoRAError,
    LoRALinear,
    adapter_state_dict,
    apply_fin3r_lora,
    base_hash,
    import_fin3r_lora,
    inject_lora,
    load_adapter,
    lora_modules,
    lora_parameters,
    merge_and_unload,
    merge_lora,
    read_adapter,
    save_adapter,
    unmerge_lora,
)

DIM, HEADS, TOKENS = 16, 2, 5


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)
        return self.proj(a.transpose(1, 2).reshape(b, n, DIM))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(DIM)
        self.attn = Attention()
        self.norm2 = nn.LayerNorm(DIM)
        self.mlp = nn.Sequential()
        self.mlp.fc1 = nn.Linear(DIM, 2 * DIM)
        self.mlp.act = nn.GELU()
        self.mlp.fc2 = nn.Linear(2 * DIM, DIM)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Tiny(nn.Module):
    def __init__(self, depth=2, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.ModuleList(Block() for _ in range(depth))
        self.head = nn.Linear(DIM, 3)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def _x(seed=1, b=3):
    return torch.randn(b, TOKENS, DIM, generator=torch.Generator().manual_seed(seed))


def _randomise(model, seed=2, std=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * std)


def _ref_weight_mode(W, A, B, s, mode):
    """The paper's W' = (W + s B A) n(W) / n(W + s B A), written independently."""
    Wd = W + s * B @ A
    if mode == "weight_row":
        return Wd * (W.norm(dim=1, keepdim=True) / Wd.norm(dim=1, keepdim=True))
    return Wd * (torch.linalg.matrix_norm(W) / torch.linalg.matrix_norm(Wd))


def _ref_output_mode(x, W, b, A, B, s, slices):
    """The released re-normalised forward (renorm_lora.py), written independently."""
    base = x @ W.T + b
    full = base + s * ((x @ A.T) @ B.T)
    parts = []
    for p0, p in zip(base.chunk(slices, -1), full.chunk(slices, -1)):
        parts.append(p * (torch.norm(p0, dim=-1, keepdim=True) / (torch.norm(p, dim=-1, keepdim=True) + 1e-6)))
    return torch.cat(parts, -1)


# --- exactness at init -----------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_wrapped_model_equals_base_at_init(mode):
    base, model, x = Tiny(), Tiny(), _x()
    names = inject_lora(model, ["qkv", "proj", "mlp.fc*"], rank=4, alpha=8.0, mode=mode)
    assert len(names) == 8 and "blocks.1.mlp.fc2" in names and "head" not in names
    y0, y = base(x), model(x)
    if mode == "output":  # the released eps makes it exact only up to ||y0|| / (||y0|| + 1e-6)
        assert torch.allclose(y, y0, rtol=1e-5, atol=1e-6)
        lin = model.blocks[0].attn.qkv
        xin = base.blocks[0].norm1(x)
        ref = _ref_output_mode(xin, lin.weight, lin.bias, lin.lora_A, lin.lora_B, 2.0, 3)
        assert torch.allclose(lin(xin), ref, rtol=1e-6, atol=1e-7)
    else:
        assert torch.equal(y, y0)
    # the base state-dict keys are unchanged; only lora_A / lora_B are added
    keys = set(model.state_dict())
    assert set(base.state_dict()) <= keys
    assert {k for k in keys - set(base.state_dict())} == {f"{n}.lora_{ab}" for n in names for ab in "AB"}


def test_layer_shapes_init_and_scaling():
    lin = nn.Linear(DIM, 3 * DIM)
    m = LoRALinear(lin, rank=4, alpha=2.0, dropout=0.1, mode=None)
    assert m.lora_A.shape == (4, DIM) and m.lora_B.shape == (3 * DIM, 4)
    assert (m.lora_B == 0).all() and m.lora_A.abs().sum() > 0
    bound = 1 / DIM**0.5  # kaiming_uniform(a=sqrt(5)) on (r, in)
    assert m.lora_A.abs().max() <= bound
    assert m.scaling == 0.5 and m.weight is lin.weight and not m.weight.requires_grad
    _randomise(m)
    x = _x()
    m.eval()
    ref = x @ lin.weight.T + lin.bias + 0.5 * (x @ m.lora_A.T) @ m.lora_B.T
    assert torch.allclose(m(x), ref, atol=1e-6)


# --- weight modes ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["weight_row", "weight_fro"])
def test_weight_modes_keep_norms_and_match_the_formula(mode):
    lin = nn.Linear(DIM, 3 * DIM)
    m = LoRALinear(lin, rank=4, alpha=8.0, mode=mode)
    _randomise(m, std=0.5)
    W = lin.weight.detach()
    Wp = m.effective_weight().detach()
    if mode == "weight_row":
        assert torch.allclose(Wp.norm(dim=1), W.norm(dim=1), rtol=1e-5)
        assert not torch.allclose(Wp / Wp.norm(dim=1, keepdim=True), W / W.norm(dim=1, keepdim=True), atol=1e-2)
    else:
        assert torch.allclose(torch.linalg.matrix_norm(Wp), torch.linalg.matrix_norm(W), rtol=1e-5)
        assert not torch.allclose(Wp.norm(dim=1), W.norm(dim=1), rtol=1e-2)  # rows do change
    ref_W = _ref_weight_mode(W, m.lora_A.detach(), m.lora_B.detach(), 2.0, mode)
    assert torch.allclose(Wp, ref_W, atol=1e-6)
    x = _x()
    assert torch.allclose(m(x), F.linear(x, ref_W, lin.bias), atol=1e-5)
    # the n(W + dW) from (out, r) products equals the norm of the materialised W + dW
    dense = m.strategy.norm_sq(W + m.delta_weight().detach())
    assert torch.allclose(m.strategy.adapted_norm_sq(m).detach(), dense, rtol=1e-5)


def test_modes_are_strategy_objects():
    from fin3r.lora.modes import MODE_OBJECTS, OUTPUT, get_mode

    assert set(MODES) == set(MODE_OBJECTS) == {None, "output", "weight_row", "weight_fro"}
    assert [get_mode(n).mergeable for n in MODES] == [n != "output" for n in MODES]
    assert OUTPUT.default_slices("blocks.0.attn.qkv") == 3 and OUTPUT.default_slices("blocks.0.attn.proj") == 1
    assert get_mode("weight_row").default_slices("blocks.0.attn.qkv") == 1
    m = LoRALinear(nn.Linear(DIM, DIM), mode="weight_fro")
    assert m.strategy is get_mode("weight_fro") and m.mode == "weight_fro"
    with pytest.raises(LoRAError, match="unknown LoRA mode"):
        get_mode("weight_col")


@pytest.mark.parametrize("mode", ["weight_row", "weight_fro"])
def test_weight_mode_gradient_flows_through_the_norm(mode):
    """Gradients equal autograd of the independent formula (norm NOT detached)."""
    lin = nn.Linear(DIM, 3 * DIM)
    m = LoRALinear(lin, rank=4, alpha=8.0, mode=mode)
    _randomise(m, std=0.5)
    x = _x()
    m(x).square().sum().backward()
    A = m.lora_A.detach().clone().requires_grad_(True)
    B = m.lora_B.detach().clone().requires_grad_(True)
    F.linear(x, _ref_weight_mode(lin.weight, A, B, 2.0, mode), lin.bias).square().sum().backward()
    assert torch.allclose(m.lora_A.grad, A.grad, rtol=1e-4, atol=1e-4)
    assert torch.allclose(m.lora_B.grad, B.grad, rtol=1e-4, atol=1e-4)
    # a detached norm gives different gradients, so the check above can fail
    A2 = A.detach().clone().requires_grad_(True)
    Wd = lin.weight + 2.0 * B.detach() @ A2
    n = Wd.norm(dim=1, keepdim=True) if mode == "weight_row" else torch.linalg.matrix_norm(Wd)
    n0 = lin.weight.norm(dim=1, keepdim=True) if mode == "weight_row" else torch.linalg.matrix_norm(lin.weight)
    F.linear(x, Wd * n0 / n.detach(), lin.bias).square().sum().backward()
    assert not torch.allclose(A2.grad, A.grad, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("mode", ["weight_row", "weight_fro"])
def test_training_after_inference_mode_and_after_a_base_weight_change(mode):
    lin = nn.Linear(DIM, DIM)
    m = LoRALinear(lin, rank=4, mode=mode)
    _randomise(m)
    x = _x()
    with torch.inference_mode():
        m(x)
    m(x).sum().backward()  # the cached n(W) must not be an inference tensor here
    assert m.lora_A.grad is not None
    with torch.no_grad():  # e.g. load_state_dict of new base weights after injection
        lin.weight.mul_(2.0)
    ref = _ref_weight_mode(lin.weight, m.lora_A, m.lora_B, 2.0, mode)
    assert torch.allclose(m(x), F.linear(x, ref, lin.bias), atol=1e-5)


@pytest.mark.parametrize("mode", [None, "weight_row", "weight_fro"])
def test_merge_unmerge_and_unload(mode):
    model, x = Tiny(), _x()
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    inject_lora(model, ["qkv", "fc2"], rank=4, mode=mode)
    _randomise(model)
    model.eval()
    y = model(x)
    merge_lora(model)
    assert all(m.merged for m in lora_modules(model).values())
    assert torch.allclose(model(x), y, atol=1e-5, rtol=1e-5)
    assert not torch.equal(model.blocks[0].attn.qkv.weight, base_sd["blocks.0.attn.qkv.weight"])
    unmerge_lora(model)
    assert torch.equal(model.blocks[0].attn.qkv.weight, base_sd["blocks.0.attn.qkv.weight"])
    assert torch.equal(model(x), y)
    merge_and_unload(model)
    assert not lora_modules(model)
    assert type(model.blocks[1].attn.qkv) is nn.Linear
    assert set(model.state_dict()) == set(base_sd)
    assert torch.allclose(model(x), y, atol=1e-5, rtol=1e-5)
    if mode == "weight_row":
        assert torch.allclose(model.blocks[0].attn.qkv.weight.norm(dim=1),
                              base_sd["blocks.0.attn.qkv.weight"].norm(dim=1), rtol=1e-5)  # fmt: skip
    # the unloaded model is loadable by a fresh base model (the original code)
    fresh = Tiny(seed=5)
    fresh.load_state_dict(model.state_dict())
    assert torch.allclose(fresh(x), y, atol=1e-5, rtol=1e-5)


def test_output_mode_cannot_merge():
    model = Tiny()
    inject_lora(model, ["qkv", "fc1"], mode="output")
    for fn in (merge_lora, merge_and_unload):
        with pytest.raises(LoRAError, match="output.*not a linear map"):
            fn(model)
    assert not any(m.merged for m in lora_modules(model).values())
    assert isinstance(model.blocks[0].attn.qkv, LoRALinear)


# --- output mode -------------------------------------------------------------------------------
def test_output_mode_keeps_qkv_norms_and_matches_reference():
    torch.manual_seed(3)
    lin = nn.Linear(DIM, 3 * DIM)
    m = LoRALinear(lin, rank=8, alpha=8.0, dropout=0.1, mode="output", slices=3)
    _randomise(m, std=0.5)
    m.train()  # the released forward applies no dropout even in training
    x = _x()
    y, y0 = m(x), lin(x)
    assert torch.equal(y, m(x))
    for q, q0 in zip(y.chunk(3, -1), y0.chunk(3, -1)):
        assert torch.allclose(q.norm(dim=-1), q0.norm(dim=-1), rtol=1e-5)
    assert not torch.allclose(y, y0, atol=1e-2)  # the adapter does change directions
    ref = _ref_output_mode(x, lin.weight, lin.bias, m.lora_A, m.lora_B, 1.0, 3)
    assert torch.allclose(y, ref, rtol=1e-6, atol=1e-6)
    # the norm is per q/k/v slice over all heads, not over the whole output nor per head
    whole = _ref_output_mode(x, lin.weight, lin.bias, m.lora_A, m.lora_B, 1.0, 1)
    assert not torch.allclose(y, whole, atol=1e-4)


def test_output_mode_uses_the_released_eps():
    """||q0|| / (||q|| + 1e-6): visible when the base output is tiny (here ~1e-6 per slice)."""
    lin = nn.Linear(DIM, 3 * DIM)
    with torch.no_grad():
        lin.weight.mul_(1e-6 / 4)
        lin.bias.zero_()
    m = LoRALinear(lin, rank=4, mode="output", slices=3)
    x = _x()
    y, y0 = m(x), lin(x)
    ref = _ref_output_mode(x, lin.weight, lin.bias, m.lora_A, m.lora_B, 2.0, 3)
    assert torch.allclose(y, ref, rtol=1e-5, atol=0)
    assert not torch.allclose(y, y0, rtol=1e-2, atol=0)  # an eps-free version would return y0


def test_output_mode_slices_from_layer_names():
    model = Tiny()
    inject_lora(model, ["qkv", "fc1"], mode="output")
    assert model.blocks[0].attn.qkv.slices == 3
    assert model.blocks[0].mlp.fc1.slices == 1  # non-qkv: the whole output is one slice
    _randomise(model)
    x = _x()
    fc1 = model.blocks[0].mlp.fc1
    with torch.no_grad():
        y = fc1(x)
        y0 = F.linear(x, fc1.weight, fc1.bias)
    assert torch.allclose(y.norm(dim=-1), y0.norm(dim=-1), rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_autocast_output_dtype_matches_the_base_layer(mode):
    lin = nn.Linear(DIM, 3 * DIM)
    m = LoRALinear(lin, rank=4, mode=mode, slices=3 if mode == "output" else 1)
    _randomise(m)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y0 = m(_x()), lin(_x())
    assert y.dtype == y0.dtype == torch.bfloat16


# --- training -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_only_lora_matrices(mode):
    model = Tiny()
    inject_lora(model, ["qkv"], rank=4, mode=mode, dropout=0.1)
    _randomise(model, std=0.1)
    model.train()
    model(_x()).square().mean().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{i}.attn.qkv.lora_{ab}" for i in range(2) for ab in "AB"}
    for n, p in model.named_parameters():
        if "lora_" in n:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n


def test_dropout_is_on_the_lora_path_only_in_training():
    lin = nn.Linear(DIM, DIM)
    m = LoRALinear(lin, rank=4, dropout=0.5, mode="weight_row")
    _randomise(m)
    x = _x()
    m.train()
    assert not torch.equal(m(x), m(x))
    m.eval()
    assert torch.equal(m(x), m(x))
    with torch.no_grad():
        m.lora_B.zero_()
    m.train()
    assert torch.equal(m(x), lin(x))  # dropout never touches the base path


def test_inject_errors():
    model = Tiny()
    with pytest.raises(LoRAError, match="'nope'"):
        inject_lora(model, ["qkv", "nope"])
    assert not lora_modules(model)  # nothing wrapped on error
    inject_lora(model, ["qkv"])
    with pytest.raises(LoRAError, match="blocks.0.attn.qkv"):
        inject_lora(model, ["blocks.0.attn.qkv"])
    with pytest.raises(LoRAError, match="mode"):
        inject_lora(Tiny(), ["qkv"], mode="dora")
    with pytest.raises(LoRAError, match="slices"):
        LoRALinear(nn.Linear(4, 10), mode="output", slices=3)


# --- adapter files --------------------------------------------------------------------------------
def _trained(mode="weight_row", targets=("qkv", "fc1")):
    model = Tiny()
    inject_lora(model, list(targets), rank=4, alpha=4.0, dropout=0.1, mode=mode)
    _randomise(model)
    return model


def test_save_load_round_trip_is_bit_exact(tmp_path):
    model = _trained("output", ("qkv", "fc1"))
    path = tmp_path / "a.safetensors"
    header = save_adapter(model, path, base_name="tiny", step=7)
    tensors, read = read_adapter(path)
    assert read == json.loads(json.dumps(header))
    assert read["targets"] == list(lora_modules(model)) and read["mode"] == "output"
    assert read["rank"] == 4 and read["alpha"] == 4.0 and read["dropout"] == 0.1
    assert read["base_name"] == "tiny" and read["step"] == 7 and read["fin3r_version"]
    assert read["base_hash"] == base_hash(model, read["targets"])
    assert read["modules"]["blocks.0.attn.qkv"]["slices"] == 3
    assert read["modules"]["blocks.0.mlp.fc1"]["slices"] == 1
    fresh = Tiny()  # same base weights, no LoRA yet: load injects
    got = load_adapter(fresh, path)
    assert got["targets"] == read["targets"]
    a, b = adapter_state_dict(model), adapter_state_dict(fresh)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = _x()
    assert torch.equal(fresh(x), model(x))
    # loading again into the already-injected model is fine too
    load_adapter(fresh, path)
    assert torch.equal(fresh(x), model(x))


def test_base_hash_ignores_merging_and_sees_weight_changes():
    model = _trained("weight_row")
    names = list(lora_modules(model))
    h = base_hash(model, names)
    merge_lora(model)
    assert base_hash(model, names) == h
    unmerge_lora(model)
    with torch.no_grad():
        model.blocks[1].attn.qkv.bias[0] += 1e-3
    assert base_hash(model, names) != h


def test_load_onto_a_different_base_names_the_layer(tmp_path):
    path = tmp_path / "a.safetensors"
    save_adapter(_trained(), path)
    other = Tiny(seed=9)
    with pytest.raises(CheckpointError, match="blocks.0.attn.qkv.*different base"):
        load_adapter(other, path)
    assert not lora_modules(other)  # no partial load
    load_adapter(other, path, check_base=False)  # explicit opt-out


def test_bad_adapter_files_name_the_key(tmp_path):
    from safetensors.torch import save_file

    model = _trained()
    path = tmp_path / "a.safetensors"
    save_adapter(model, path)
    tensors, header = read_adapter(path)

    def write(name, t, h):
        p = tmp_path / name
        save_file(t, str(p), metadata={"fin3r_adapter": json.dumps(h)})
        return p

    def fails(p, pattern, target=None):
        target = target or Tiny()
        before = {k: v.clone() for k, v in target.state_dict().items()}
        with pytest.raises(CheckpointError, match=pattern):
            load_adapter(target, p)
        assert not lora_modules(target)  # never a partial load
        after = target.state_dict()
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    t = dict(tensors)
    t["blocks.1.mlp.fc1.lora_B"] = torch.zeros(2 * DIM, 5)
    fails(write("shape.safetensors", t, header), r"'blocks.1.mlp.fc1.lora_B' has shape \(32, 5\)")

    t = dict(tensors)
    del t["blocks.0.attn.qkv.lora_A"]
    fails(write("missing.safetensors", t, header), "missing tensor 'blocks.0.attn.qkv.lora_A'")

    t = dict(tensors, **{"blocks.0.attn.proj.lora_A": torch.zeros(4, DIM)})
    fails(write("extra.safetensors", t, header), "unexpected tensor 'blocks.0.attn.proj.lora_A'")

    small = Tiny(depth=1)
    fails(path, "target 'blocks.1.attn.qkv' is not a module", small)

    h = dict(header, targets=header["targets"] + ["blocks.0.norm1"])
    h["modules"] = dict(header["modules"], **{"blocks.0.norm1": header["modules"]["blocks.0.mlp.fc1"]})
    fails(write("notlinear.safetensors", tensors, h), "'blocks.0.norm1' is a LayerNorm")

    fails(write("version.safetensors", tensors, dict(header, format_version=99)), "format_version 99")

    save_file(tensors, str(tmp_path / "plain.safetensors"))
    fails(tmp_path / "plain.safetensors", "no 'fin3r_adapter' header")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    fails(tmp_path / "junk.safetensors", "not a safetensors file")
    fails(tmp_path / "absent.safetensors", "not found")

    conflicting = Tiny()
    inject_lora(conflicting, ["qkv", "fc1"], rank=2, mode="weight_row")
    with pytest.raises(CheckpointError, match="'blocks.0.attn.qkv' already has a LoRA with rank=2"):
        load_adapter(conflicting, path)
    extra = Tiny()
    inject_lora(extra, ["qkv", "fc1", "fc2"], rank=4, alpha=4.0)
    with pytest.raises(CheckpointError, match="LoRA on 'blocks.0.mlp.fc2'"):
        load_adapter(extra, path)


def test_save_errors(tmp_path):
    with pytest.raises(LoRAError, match="no LoRA"):
        save_adapter(Tiny(), tmp_path / "x.safetensors")
    with pytest.raises(LoRAError, match="'rank' is reserved"):
        save_adapter(_trained(), tmp_path / "x.safetensors", rank=3)
    assert not list(tmp_path.iterdir())  # nothing half-written


# --- released Fin3R adapters (PEFT key names) -------------------------------------------------------
def _fake_released(model, path, rank=8, seed=4, extra=None):
    """A *_lora.pth as the released code writes it: PEFT-wrapped block.attn, strict=False dict."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, blk in enumerate(model.blocks):
        pre = f"blocks.{i}.attn.base_model.model"
        sd[f"{pre}.qkv.base_layer.weight"] = blk.attn.qkv.weight.detach().clone()
        sd[f"{pre}.qkv.base_layer.bias"] = blk.attn.qkv.bias.detach().clone()
        sd[f"{pre}.qkv.lora_A.default.weight"] = torch.randn(rank, DIM, generator=g) * 0.3
        sd[f"{pre}.qkv.lora_B.default.weight"] = torch.randn(3 * DIM, rank, generator=g) * 0.3
        sd[f"{pre}.proj.weight"] = blk.attn.proj.weight.detach().clone()
        sd[f"{pre}.proj.bias"] = blk.attn.proj.bias.detach().clone()
    sd.update(extra or {})
    torch.save(sd, path)
    return sd


def test_import_released_adapter_keys_and_values(tmp_path):
    model = Tiny()
    sd = _fake_released(model, tmp_path / "tiny_lora.pth")
    adapter = import_fin3r_lora(tmp_path / "tiny_lora.pth", model=model)
    assert set(adapter) == {f"blocks.{i}.attn.qkv.lora_{ab}" for i in range(2) for ab in "AB"}
    assert torch.equal(adapter["blocks.1.attn.qkv.lora_B"],
                       sd["blocks.1.attn.base_model.model.qkv.lora_B.default.weight"])  # fmt: skip


def test_apply_released_adapter_matches_the_released_forward(tmp_path):
    model, reference = Tiny(), Tiny()
    sd = _fake_released(model, tmp_path / "tiny_lora.pth")
    names = apply_fin3r_lora(model, tmp_path / "tiny_lora.pth")
    assert names == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    m = model.blocks[0].attn.qkv
    assert (m.mode, m.rank, m.scaling, m.slices) == ("output", 8, 1.0, 3)
    # the released model: every qkv output re-normalised per q/k/v slice, written by hand
    x = _x()
    h = x
    for i, blk in enumerate(reference.blocks):
        pre = f"blocks.{i}.attn.base_model.model.qkv"
        A, B = sd[f"{pre}.lora_A.default.weight"], sd[f"{pre}.lora_B.default.weight"]
        W, b = blk.attn.qkv.weight, blk.attn.qkv.bias
        xin = blk.norm1(h)
        qkv = _ref_output_mode(xin, W, b, A, B, 1.0, 3)
        q, k, v = qkv.reshape(*xin.shape[:2], 3, HEADS, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(xin.shape)
        h = h + blk.attn.proj(a)
        h = h + blk.mlp(blk.norm2(h))
    with torch.no_grad():
        assert torch.allclose(model(x), reference.head(h), atol=1e-5)
    # and it round-trips through our own adapter format
    save_adapter(model, tmp_path / "ours.safetensors", base_name="tiny")
    again = Tiny()
    load_adapter(again, tmp_path / "ours.safetensors")
    assert torch.equal(again(x), model(x))


def test_released_adapter_errors(tmp_path):
    model = Tiny()
    _fake_released(model, tmp_path / "ok.pth")
    other = Tiny(seed=3)
    with pytest.raises(CheckpointError, match="'blocks.0.attn.qkv.weight' differs"):
        apply_fin3r_lora(other, tmp_path / "ok.pth")
    assert not lora_modules(other)
    with pytest.raises(CheckpointError, match="'blocks.0.attn.qkv.weight' differs"):
        import_fin3r_lora(tmp_path / "ok.pth", model=other)
    import_fin3r_lora(tmp_path / "ok.pth")  # without a model: no check
    _fake_released(model, tmp_path / "r4.pth", rank=4)
    small = Tiny(depth=1)
    with pytest.raises(CheckpointError, match="not in the model's state_dict"):
        apply_fin3r_lora(small, tmp_path / "r4.pth")
    with pytest.raises(CheckpointError, match="target 'blocks.1.attn.qkv' is not a module"):
        apply_fin3r_lora(small, tmp_path / "r4.pth", check_base=False)
    sd = torch.load(tmp_path / "ok.pth", weights_only=True)
    del sd["blocks.1.attn.base_model.model.qkv.lora_B.default.weight"]
    torch.save(sd, tmp_path / "half.pth")
    with pytest.raises(CheckpointError, match="'blocks.1.attn.qkv.lora_A' has no matching"):
        import_fin3r_lora(tmp_path / "half.pth")
    torch.save({"w": torch.zeros(2)}, tmp_path / "nolora.pth")
    with pytest.raises(CheckpointError, match="no PEFT LoRA keys"):
        import_fin3r_lora(tmp_path / "nolora.pth")
    torch.save({"model": nn.Linear(2, 2)}, tmp_path / "pickled.pth")  # needs full unpickling
    with pytest.raises(CheckpointError, match="weights_only"):
        import_fin3r_lora(tmp_path / "pickled.pth")


def test_peft_cross_check():
    peft = pytest.importorskip("peft")
    blk = Block()
    ref = Block()
    ref.load_state_dict(blk.state_dict())
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv"], lora_dropout=0.0)
    pm = peft.get_peft_model(ref.attn, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.3)
    inject_lora(blk, ["attn.qkv"], rank=4, alpha=8.0, mode=None)
    A = pm.base_model.model.qkv.lora_A.default.weight
    B = pm.base_model.model.qkv.lora_B.default.weight
    with torch.no_grad():
        blk.attn.qkv.lora_A.copy_(A)
        blk.attn.qkv.lora_B.copy_(B)
    x = _x()
    assert torch.allclose(blk.attn(x), pm(x), atol=1e-6)
