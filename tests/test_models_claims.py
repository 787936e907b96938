"""What the model files claim beyond the shared contract of test_models.py: initialisation, stems,
output heads, the UNet's step embedding and "no label", the HVAE's prior, the ViT's class token,
the registry's errors."""

from __future__ import annotations

import math

import pytest
import torch

from mlenv.errors import ConfigError
from mlenv.models import MODELS, create_model


def test_resnet_init_is_he_fan_out_and_batchnorm_identity():
    torch.manual_seed(0)
    model = create_model("resnet18", in_channels=3, out_features=4, width=16)
    widen = model.stages[1][0].branch[0][0]  # 3x3, 16 -> 32 channels: fan-out 288, fan-in 144
    assert widen.weight.shape == (32, 16, 3, 3)
    assert widen.weight.std().item() == pytest.approx(math.sqrt(2 / (32 * 9)), rel=0.05)
    norm = model.stages[1][0].branch[0][1]
    assert torch.equal(norm.weight, torch.ones(32)) and torch.equal(norm.bias, torch.zeros(32))


def test_resnet_stems_and_the_first_stage_keeps_the_side():
    x = torch.zeros(1, 3, 32, 32)
    cifar = create_model("resnet18", width=8)
    assert cifar.stem(x).shape == (1, 8, 32, 32)
    assert cifar.stages[0](cifar.stem(x)).shape == (1, 8, 32, 32)  # stage 1 does not stride
    imagenet = create_model("resnet18", width=8, stem="imagenet")
    assert imagenet.stem(x).shape == (1, 8, 8, 8)  # 7x7 stride 2, then 3x3 pool stride 2: 1/4


def test_binary_mlp_heads():
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    logits = create_model("binary-mlp", seed=0, in_features=3, hidden=[8]).eval()
    sigmoid = create_model("binary-mlp", seed=0, in_features=3, hidden=[8], output="sigmoid")
    two = create_model("binary-mlp", seed=0, in_features=3, hidden=[8], output="two-class")
    out = logits(x)
    assert out.shape == (64,) and (out < 0).any() and (out > 0).any()  # logits, not squashed
    torch.testing.assert_close(sigmoid.eval()(x), torch.sigmoid(out))  # same weights (seed)
    assert two(x).shape == (64, 2)


def test_mlp_activation_is_the_one_named():
    model = create_model("mlp", in_features=2, hidden=[3], activation="tanh")
    assert isinstance(model.net[1], torch.nn.Tanh)


def test_unet_step_embedding_and_the_no_label_default():
    from mlenv.models.unet import sinusoidal_embedding

    emb = sinusoidal_embedding(torch.tensor([0, 2]), 4)
    # even columns sin(t / 10000^(i/4)), odd columns cos: t = 0 gives 0, 1, 0, 1
    torch.testing.assert_close(emb[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    angles = 2 * torch.tensor([1.0, 10000**-0.25, 10000**-0.5, 10000**-0.75])
    expected = torch.stack([angles[0].sin(), angles[1].cos(), angles[2].sin(), angles[3].cos()])
    torch.testing.assert_close(emb[1], expected)
    torch.manual_seed(0)
    model = create_model("unet-conditional", channels=(4, 8, 8), time_dim=8).eval()
    assert model.null_label == 10
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 400])
    with torch.no_grad():
        unlabelled = model(x, t)
        torch.testing.assert_close(unlabelled, model(x, t, torch.tensor([10, 10])))
        assert not torch.allclose(unlabelled, model(x, t, torch.tensor([9, 9])))


def test_hvae_prior_of_z1_is_decoded_from_z2_and_eval_uses_the_means():
    torch.manual_seed(0)
    model = create_model("hvae", in_features=6, hidden=5, latent=3).eval()
    x = torch.rand(4, 6)
    out = model(x)
    mu1, _ = model.encoder1(x)
    mu2, _ = model.encoder2(mu1)
    torch.testing.assert_close(out.mu2, mu2)
    torch.testing.assert_close(out.z1_prior_mean, model.decoder2(mu2))
    torch.testing.assert_close(out.logits, model.decoder1(mu1))
    # while training, q(z2 | z1) and p(x | z1) see the same sampled z1, not its mean
    seen = {}
    for name in ("encoder2", "decoder1"):
        getattr(model, name).register_forward_hook(
            lambda _m, inputs, _o, name=name: seen.__setitem__(name, inputs[0])
        )
    out = model.train()(x)
    assert torch.equal(seen["encoder2"], seen["decoder1"])
    assert not torch.allclose(seen["decoder1"], out.mu1)


def test_samples_are_ancestral_draws_through_the_sigmoid():
    torch.manual_seed(0)
    vae = create_model("vae", in_features=6, hidden=5, latent=3)
    hvae = create_model("hvae", in_features=6, hidden=5, latent=3)
    with torch.no_grad():
        z = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(
            vae.sample(64, generator=torch.Generator().manual_seed(1)), vae.decoder(z).sigmoid()
        )
        # z2 ~ N(0, I), then z1 ~ N(decoder2(z2), I): the unit-variance noise is drawn next
        g = torch.Generator().manual_seed(2)
        z2, noise = torch.randn(64, 3, generator=g), torch.randn(64, 3, generator=g)
        expected = hvae.decoder1(hvae.decoder2(z2) + noise).sigmoid()
        got = hvae.sample(64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(got, expected)
    assert got.min() >= 0 and got.max() <= 1


def test_vae_reparameterisation_has_the_encoded_spread():
    torch.manual_seed(0)
    model = create_model("vae", in_features=4, hidden=3, latent=2).train()
    with torch.no_grad():
        model.to_logvar.weight.zero_()
        model.to_logvar.bias.fill_(math.log(4.0))  # sigma = exp(logvar / 2) = 2
    seen = {}
    model.decoder.register_forward_hook(lambda _m, inputs, _o: seen.setdefault("z", inputs[0]))
    with torch.no_grad():
        _, mu, _ = model(torch.rand(1, 4).expand(20000, 4))
    z = seen["z"]
    torch.testing.assert_close(z.mean(0), mu[0], atol=0.05, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([2.0, 2.0]), atol=0.05, rtol=0)


def test_vit_reads_the_class_token():
    torch.manual_seed(0)
    model = create_model("vit", image_size=8, patch_size=4, n_layer=1, n_head=2, n_embd=8).eval()
    seen = {}
    model.blocks[-1].register_forward_hook(lambda _m, _i, out: seen.setdefault("tokens", out))
    with torch.no_grad():
        logits = model(torch.randn(3, 1, 8, 8))
        expected = model.head(model.final_ln(seen["tokens"][:, 0]))
    assert seen["tokens"].shape == (3, 5, 8)  # class token + 4 patches
    torch.testing.assert_close(logits, expected)


def test_simple_cnn_dropouts_are_the_ones_given():
    model = create_model("simple-cnn", dropout=0.1, head_dropout=0.4)
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.1, 0.1, 0.4]


def test_registry_names_an_unknown_argument_and_refuses_a_duplicate_name():
    with pytest.raises(
        ConfigError, match=r"model 'mlp' has no argument hiden; allowed: in_features"
    ):
        create_model("mlp", in_features=3, hiden=[4])
    with pytest.raises(ValueError, match="model 'mlp' is registered twice"):
        MODELS.register("mlp")(lambda: None)
    with pytest.raises(ConfigError, match=r"unknown model 'mpl' \(did you mean 'mlp'\?\)"):
        create_model("mpl")
