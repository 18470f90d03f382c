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


def _deepspeed_bf16(model):
    """What DeepSpeed's bf16 mode does to a module: parameters to bfloat16, buffers left alone."""
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    return model


def test_bf16_parameters_with_float32_statistics_train_and_predict():
    """DeepSpeed bf16 leaves BatchNorm statistics in float32: the network still trains (statistics
    kept in float32) and predicts from float32 volumes (the input is cast to the module's dtype)."""
    import numpy as np

    from pscv_dist.eval.inference import input_dtype, predict_volume

    torch.manual_seed(0)
    ref = UNet(1, 3, 4, 2).eval()
    model = _deepspeed_bf16(UNet(1, 3, 4, 2))
    model.load_state_dict(ref.state_dict())
    assert input_dtype(model) == torch.bfloat16 and model.encoder[0][1].running_mean.dtype == torch.float32
    x = torch.rand(2, 1, 16, 16)
    model.train()
    out = model(x.to(torch.bfloat16))
    out.float().square().mean().backward()
    bn = model.encoder[0][1]
    assert out.dtype == torch.bfloat16 and bn.running_mean.dtype == torch.float32 and bn.num_batches_tracked == 1
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in model.parameters())
    model.load_state_dict(ref.state_dict())
    volume = np.random.default_rng(0).random((3, 20, 24)).astype(np.float32)
    got, want = predict_volume(model, volume, 16), predict_volume(ref, volume, 16)
    assert got.shape == want.shape == (3, 20, 24) and (got == want).mean() > 0.95
