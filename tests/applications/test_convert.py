"""arkern.convert's framework: safe checkpoint reading, key/shape checks, weight-norm and BatchNorm folding,
--config parsing. The sources themselves are tested in test_convert_<source>.py."""

import pytest
import torch
from torch import nn

from arkern import convert
from arkern.cli import main
from arkern.convert.checkpoint import StateReader, fold_batchnorm, fold_weight_norm, read_state_dict


def test_read_state_dict_nested_prefixed_and_module(tmp_path):
    conv = nn.Conv2d(2, 3, 3)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in conv.state_dict().items()}, "global_step": 7}
    path = tmp_path / "ckpt.pth"
    torch.save(wrapped, path)
    for checkpoint in (path, str(path), wrapped, conv):
        state = read_state_dict(checkpoint)
        assert sorted(state) == ["bias", "weight"]
        assert torch.equal(state["weight"], conv.weight)


def test_pickled_module_is_refused_with_the_extraction_recipe(tmp_path):
    path = tmp_path / "whole.pth"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(ValueError, match=r"pickles code.*weights_only=False\).state_dict\(\)"):
        read_state_dict(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        read_state_dict(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        read_state_dict(junk)
    with pytest.raises(ValueError, match="not a state dict.*'step'"):
        read_state_dict({"step": 3})
    with pytest.raises(TypeError, match="path, a state dict or a module"):
        read_state_dict(3)


def test_reader_names_key_and_both_shapes():
    reader = StateReader({"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4), "extra": torch.zeros(2)}, "x")
    with pytest.raises(ValueError, match=r"'a.weight' has shape \(4, 3\), expected \(5, 3\)"):
        reader.take("a.weight", (5, 3))
    with pytest.raises(ValueError, match=r"missing key 'a.scale' \(expected shape \(4,\)\).*a.bias"):
        reader.take("a.scale", (4,))
    assert reader.take("a.weight", (-1, 3)).shape == (4, 3)
    assert reader.take_optional("b.bias") is None
    reader.take("a.bias", (4,))
    with pytest.raises(ValueError, match=r"unexpected keys for the given config: extra \(2,\)"):
        reader.finish()
    reader.skip(["extra"])
    reader.finish()


@pytest.mark.filterwarnings("ignore:.*weight_norm. is deprecated")
@pytest.mark.parametrize("module, dim", [(nn.Conv2d(3, 5, (2, 3)), 0), (nn.ConvTranspose2d(4, 6, (2, 3)), 0),
                                         (nn.Linear(7, 2), 0), (nn.Conv1d(3, 4, 2), 1)])
def test_weight_norm_folding_matches_torch(module, dim):
    torch.manual_seed(0)
    normed = nn.utils.weight_norm(module, dim=dim)
    with torch.no_grad():
        normed.weight_g.uniform_(0.5, 2.0)
    state = normed.state_dict()
    folded = fold_weight_norm(state["weight_g"], state["weight_v"], dim)
    expected = torch._weight_norm(state["weight_v"], state["weight_g"], dim)
    torch.testing.assert_close(folded, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.filterwarnings("ignore:.*weight_norm. is deprecated")
def test_take_weight_reads_both_weight_norm_spellings():
    torch.manual_seed(0)
    old = nn.utils.weight_norm(nn.Conv2d(3, 4, 3))
    new = nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 4, 3))
    plain = nn.Conv2d(3, 4, 3)
    for module in (old, new, plain):
        state = {f"conv.{k}": v for k, v in module.state_dict().items()}
        reader = StateReader(state, "test")
        w = reader.take_weight("conv", (4, 3, 3, 3))
        reader.take("conv.bias", (4,))
        reader.finish()
        expected = torch._weight_norm(state["conv.weight_v"], state["conv.weight_g"], 0) if module is old else (
            module.weight.detach())
        torch.testing.assert_close(w, expected, rtol=1e-6, atol=1e-6)


def test_batchnorm_folding_matches_eval_conv_bn():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 5, 3, bias=False), nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    bn.eval()
    w, b = fold_batchnorm(conv.weight, None, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    x = torch.randn(2, 3, 6, 7)
    torch.testing.assert_close(nn.functional.conv2d(x, w, b), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_parse_config():
    assert convert.parse_config(["nr_resnet=5", "scales=[4, 4]", "legacy=true", "x=None", "name=abc",
                                 "log_scale_min=-7.0"]) == {
        "nr_resnet": 5, "scales": [4, 4], "legacy": True, "x": None, "name": "abc", "log_scale_min": -7.0}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        convert.parse_config(["5"])


def test_unknown_source_lists_the_known_ones(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown source 'nope'; known sources"):
        convert.load({"w": torch.zeros(1)}, "nope")
    with pytest.raises(SystemExit) as e:
        main(["convert", str(tmp_path / "x.pth"), "--source", "nope", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "--source: unknown 'nope'" in capsys.readouterr().err
