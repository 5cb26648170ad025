import pytest
import torch
from torch import nn
from torchsummary import summary

from cifar_s12.model import MODELS, CustomResNet, ResNet18, build_model, count_parameters


def test_custom_resnet_parameter_count_and_torchsummary(capsys):
    model = CustomResNet()
    assert count_parameters(model) == 6_573_120
    summary(model, (3, 32, 32), device="cpu")
    assert "Total params: 6,573,120" in capsys.readouterr().out


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_resnet18_parameter_count(norm):
    model = ResNet18(norm=norm)
    assert count_parameters(model) == 11_173_962
    kinds = {type(m) for m in model.modules()}
    assert (nn.GroupNorm in kinds) == (norm == "gn") and (nn.BatchNorm2d in kinds) == (norm == "bn")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shape_is_logits_per_class(name):
    model = build_model(name).eval()
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 10)


def test_custom_resnet_layout_matches_the_course():
    model = CustomResNet()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (3, 64), (64, 128), (128, 128), (128, 128), (128, 256), (256, 512), (512, 512), (512, 512)]
    assert all(c.bias is None and c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert model.fc.bias is None and model.fc.in_features == 512


def test_residual_block_adds_its_input():
    model = CustomResNet().eval()
    block = model.layer1[1]
    for p in block.body.parameters():
        nn.init.zeros_(p)  # F(x) == 0, so the block must return x unchanged
    x = torch.randn(2, 128, 16, 16)
    assert torch.equal(block(x), x)


def test_dropout_is_off_by_default_and_configurable():
    assert not any(isinstance(m, nn.Dropout) for m in CustomResNet().modules())
    drops = [m for m in CustomResNet(dropout=0.1).modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 8 and all(d.p == 0.1 for d in drops)
    assert count_parameters(CustomResNet(dropout=0.1)) == 6_573_120


def test_logit_scale_scales_outputs_only():
    torch.manual_seed(0)
    a = CustomResNet().eval()
    b = CustomResNet(logit_scale=0.125).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(b(x), a(x) * 0.125)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg")
