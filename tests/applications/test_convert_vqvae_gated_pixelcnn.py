"""Source "vqvae-gated-pixelcnn" (ritheshkumar95/pytorch-vqvae's GatedPixelCNN prior): log_prob equals
upstream's summed cross-entropy, naive == cached == fused class-conditional code grids, clear errors on bad
checkpoints, the CLI round trip.

``UpstreamGatedPixelCNN`` is written here from the published architecture (its key names, shapes and math):
code embedding, per-layer class embedding, vertical / horizontal stacks with their crops and mask A,
vert_to_horiz on the unconditioned vertical pre-activations, gates, residuals, the 512-wide output convs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import arkern
from arkern import convert
from arkern.cli import main
from arkern.families import draw_noise
from arkern.sampling import sample_image

K, DIM, LAYERS, CLASSES = 12, 4, 3, 3


def gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class UpstreamGatedLayer(nn.Module):
    def __init__(self, mask_type: str, dim: int, kernel: int, residual: bool, n_classes: int) -> None:
        super().__init__()
        self.mask_type, self.residual = mask_type, residual
        self.class_cond_embedding = nn.Embedding(n_classes, 2 * dim)
        self.vert_stack = nn.Conv2d(dim, 2 * dim, (kernel // 2 + 1, kernel), 1, (kernel // 2, kernel // 2))
        self.vert_to_horiz = nn.Conv2d(2 * dim, 2 * dim, 1)
        self.horiz_stack = nn.Conv2d(dim, 2 * dim, (1, kernel // 2 + 1), 1, (0, kernel // 2))
        self.horiz_resid = nn.Conv2d(dim, dim, 1)

    def forward(self, x_v: torch.Tensor, x_h: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mask_type == "A":  # the causal mask: the vertical kernel's last row, the horizontal one's last column
            self.vert_stack.weight.data[:, :, -1] = 0
            self.horiz_stack.weight.data[:, :, :, -1] = 0
        cls = self.class_cond_embedding(label)[:, :, None, None]
        h_vert = self.vert_stack(x_v)[:, :, :x_v.shape[-2], :]
        out_v = gate(h_vert + cls)
        h_horiz = self.horiz_stack(x_h)[:, :, :, :x_h.shape[-1]]
        out = gate(self.vert_to_horiz(h_vert) + h_horiz + cls)
        out_h = self.horiz_resid(out) + (x_h if self.residual else 0)
        return out_v, out_h


class UpstreamGatedPixelCNN(nn.Module):
    def __init__(self, input_dim: int = K, dim: int = DIM, n_layers: int = LAYERS, n_classes: int = CLASSES) -> None:
        super().__init__()
        self.embedding = nn.Embedding(input_dim, dim)
        self.layers = nn.ModuleList(UpstreamGatedLayer("A" if i == 0 else "B", dim, 7 if i == 0 else 3, i > 0,
                                                       n_classes) for i in range(n_layers))
        self.output_conv = nn.Sequential(nn.Conv2d(dim, 512, 1), nn.ReLU(True), nn.Conv2d(512, input_dim, 1))

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        x = self.embedding(x).permute(0, 3, 1, 2)  # (B, H, W) codes -> (B, dim, H, W)
        x_v = x_h = x
        for layer in self.layers:
            x_v, x_h = layer(x_v, x_h, label)
        return self.output_conv(x_h)


def upstream_model(seed: int = 0) -> UpstreamGatedPixelCNN:
    torch.manual_seed(seed)
    model = UpstreamGatedPixelCNN()
    with torch.no_grad():  # biases matter at the borders (upstream's row 0 sees its zero padding through them)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.3)
    return model.eval()


def upstream_nll(model: UpstreamGatedPixelCNN, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Upstream's loss per grid: cross-entropy of the logits against the codes (B, H, W), summed (nats)."""
    with torch.no_grad():
        logits = model(codes, labels)
    return F.cross_entropy(logits, codes, reduction="none").flatten(1).sum(1)


CONFIG = {"input_dim": K, "dim": DIM, "n_layers": LAYERS, "n_classes": CLASSES}


@pytest.mark.parametrize("prefix", ["", "module."])
def test_log_prob_equals_upstream_loss(tmp_path, prefix):
    upstream = upstream_model()
    codes, labels = torch.randint(0, K, (3, 6, 5)), torch.tensor([0, 2, 1])
    expected = upstream_nll(upstream, codes, labels)  # runs make_causal, as training did before saving
    path = tmp_path / "prior.pt"
    torch.save({f"{prefix}{k}": v for k, v in upstream.state_dict().items()}, path)
    model = convert.load(path, "vqvae-gated-pixelcnn", **CONFIG)
    torch.testing.assert_close(-model.log_prob(codes[:, None], labels), expected, rtol=2e-5, atol=1e-4)
    assert model.meta["shape"] == [8, 8] and model.num_labels == CLASSES


def test_unmasked_checkpoint_is_masked_at_load():
    """A checkpoint saved before any forward still holds the weights make_causal zeroes: they are dropped."""
    upstream = upstream_model(seed=1)
    state = {k: v.clone() for k, v in upstream.state_dict().items()}
    codes, labels = torch.randint(0, K, (2, 4, 6)), torch.tensor([1, 0])
    model = convert.load(state, "vqvae-gated-pixelcnn", **CONFIG)
    torch.testing.assert_close(-model.log_prob(codes[:, None], labels), upstream_nll(upstream, codes, labels),
                               rtol=2e-5, atol=1e-4)


def test_naive_cached_fused_identical_code_grids():
    model = convert.load(upstream_model().state_dict(), "vqvae-gated-pixelcnn", **CONFIG)
    labels = torch.tensor([2, 0])
    noise = draw_noise(model, 2, (5, 4), seed=5)
    grids = {m: sample_image(model, 2, shape=(5, 4), method=m, noise=noise, condition=labels)
             for m in ("naive", "cached", "fused")}
    assert grids["naive"].shape == (2, 1, 5, 4) and len(grids["naive"].unique()) > 1
    assert torch.equal(grids["naive"], grids["cached"]) and torch.equal(grids["naive"], grids["fused"])
    codes = arkern.generate(model, 2, shape=(5, 4), condition=labels, noise=noise)
    assert codes.shape == (2, 5, 4) and torch.equal(codes, grids["fused"][:, 0])  # upstream's (B, H, W) grids
    rows = []
    arkern.generate(model, 2, shape=(5, 4), condition=labels, noise=noise, callback=lambda r, i: rows.append(r))
    assert [r.shape for r in rows] == [(2, 1, 4)] * 5 and torch.equal(torch.cat(rows, 1), codes)
    assert torch.equal(model.log_prob(codes, labels), model.log_prob(codes[:, None], labels))


def test_bad_checkpoints_name_key_and_shapes():
    state = upstream_model().state_dict()
    with pytest.raises(ValueError, match=r"'embedding.weight' has shape \(12, 4\), expected \(16, 4\)"):
        convert.load(state, "vqvae-gated-pixelcnn", **{**CONFIG, "input_dim": 16})
    with pytest.raises(ValueError, match=r"missing key 'layers.3.class_cond_embedding.weight' \(expected shape "
                                         r"\(3, 8\)\)"):
        convert.load(state, "vqvae-gated-pixelcnn", **{**CONFIG, "n_layers": 4})
    with pytest.raises(ValueError, match=r"unexpected keys for the given config: layers.2.class_cond_embedding"):
        convert.load(state, "vqvae-gated-pixelcnn", **{**CONFIG, "n_layers": 2})
    with pytest.raises(ValueError, match=r"'layers.0.class_cond_embedding.weight' has shape \(3, 8\), expected "
                                         r"\(10, 8\)"):
        convert.load(state, "vqvae-gated-pixelcnn", **{k: v for k, v in CONFIG.items() if k != "n_classes"})


def test_cli_convert_sample_and_load(tmp_path, capsys):
    path = tmp_path / "prior.pt"
    upstream = upstream_model()
    torch.save(upstream.state_dict(), path)
    out = tmp_path / "prior"
    args = ["convert", str(path), "--source", "vqvae-gated-pixelcnn", "--out", str(out), "--config", f"input_dim={K}",
            "--config", f"dim={DIM}", "--config", f"n_layers={LAYERS}", "--config", f"n_classes={CLASSES}",
            "--config", "shape=[4, 4]"]
    assert main(args) == 0
    grid = tmp_path / "grid.png"
    assert main(["sample", str(out), "--n", "4", "--out", str(grid), "--seed", "0", "--no-progress"]) == 0
    assert grid.stat().st_size > 0 and "4 images 4x4" in capsys.readouterr().out
    model = arkern.load(out)
    assert model.meta["kind"] == "codes"
    assert arkern.generate(model, 3, shape=(4, 4), condition=1, seed=0).shape == (3, 4, 4)
    codes, labels = torch.randint(0, K, (2, 4, 4)), torch.tensor([2, 1])
    torch.testing.assert_close(-model.log_prob(codes, labels), upstream_nll(upstream, codes, labels),
                               rtol=2e-5, atol=1e-4)
