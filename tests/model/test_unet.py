import pytest
import torch

from pscv_dist.model import UNet


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_count_matches_hand_count():
    # conv3x3 blocks: 9·cin·cout + cout (conv) + 2·cout (BN), twice; transposed 2x2: 4·cin·cout + cout
    def block(cin, cout):
        return 9 * cin * cout + cout + 2 * cout + 9 * cout * cout + cout + 2 * cout

    ch = [16, 32, 64, 128, 256]
    enc = block(1, 16) + sum(block(ch[i - 1], ch[i]) for i in range(1, 5))
    dec = sum(4 * ch[i] * ch[i - 1] + ch[i - 1] + block(2 * ch[i - 1], ch[i - 1]) for i in range(4, 0, -1))
    head = 9 * 16 * 4 + 4
    assert n_params(UNet(num_classes=4)) == enc + dec + head == 1_944_324
    assert n_params(UNet(num_classes=4, upsample="bilinear")) == 1_813_764  # WSL4MIS's variant


@pytest.mark.parametrize("hw", [(32, 32), (48, 80), (256, 256)])
def test_any_size_divisible_by_16(hw):
    out = UNet(num_classes=3).eval()(torch.rand(2, 1, *hw))
    assert out.shape == (2, 3, *hw)


def test_channels_last_gives_same_result():
    m = UNet(num_classes=4).eval()
    x = torch.rand(2, 1, 64, 64)
    ref = m(x)
    out = m.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_depth_and_width_are_config():
    m = UNet(num_classes=2, base_width=8, depth=3)
    assert m(torch.rand(1, 1, 24, 24)).shape == (1, 2, 24, 24)


def test_ill_inputs():
    with pytest.raises(ValueError, match="divisible by 16"):
        UNet()(torch.rand(1, 1, 40, 40))
    with pytest.raises(ValueError, match="dropout needs depth"):
        UNet(dropout=(0.1, 0.2))
    with pytest.raises(ValueError, match="upsample"):
        UNet(upsample="nearest")
    with pytest.raises(ValueError, match="num_classes"):
        UNet(num_classes=1)
