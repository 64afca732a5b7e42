"""The probability-recording processor: same output as diffusers' stock processor, installed and restored."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from bench.sd.errors import ConfigError
from method.attention import ProbabilityProcessor, cross_attention_layers, recording_attention, resolve_layers
from tests.method.unets import NO_TAIL, SD15_LAST, SD15_SHAPED, TINY, TINY_LAST, build_unet


@pytest.fixture(scope="module")
def tiny():
    return build_unet(TINY)


@pytest.fixture(scope="module")
def sd15_shaped():
    return build_unet(SD15_SHAPED)


def test_last_layer_follows_execution_order_not_the_processor_dict(tiny, sd15_shaped):
    # attn_processors lists the mid block last, although the decoder runs after it.
    for unet in (tiny, sd15_shaped):
        assert list(unet.attn_processors)[-1].startswith("mid_block.")
    assert resolve_layers(tiny, "last") == [TINY_LAST]
    assert resolve_layers(sd15_shaped, "last") == [SD15_LAST]  # SD1.5's known last layer
    layers = cross_attention_layers(sd15_shaped)
    assert len(layers) == 16  # as on SD1.5
    assert layers[6].startswith("mid_block.")  # 6 encoder layers, then the mid block, then 9 decoder layers
    assert resolve_layers(build_unet(NO_TAIL), "last") == ["up_blocks.1.attentions.1.transformer_blocks.0.attn2"]


def test_execution_order_is_the_order_the_layers_run(sd15_shaped):
    seen = []
    hooks = [
        sd15_shaped.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.append(name))
        for name in cross_attention_layers(sd15_shaped)
    ]
    try:
        with torch.no_grad():
            sd15_shaped(torch.randn(1, 4, 4, 4), 10, encoder_hidden_states=torch.randn(1, 77, 16))
    finally:
        for h in hooks:
            h.remove()
    assert seen == cross_attention_layers(sd15_shaped)


@pytest.mark.parametrize("config", [TINY, SD15_SHAPED], ids=["tiny", "sd15_shaped"])
def test_output_equals_stock_processor(config):
    unet = build_unet(config)
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    z, cond = torch.randn(2, 4, 8, 8), torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        stock = unet(z, 500, encoder_hidden_states=cond).sample
        names = resolve_layers(unet, "all")
        with recording_attention(unet, names) as store:
            ours = unet(z, 500, encoder_hidden_states=cond).sample
    assert (ours - stock).abs().max().item() <= 1e-5 * max(1.0, stock.abs().max().item())
    assert set(store.records) == set(names)
    for record in store.records.values():
        probs = record.probs  # [B, H, N, 77]
        assert probs.shape[0] == 2 and probs.shape[-1] == 77
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))


def test_probabilities_are_in_the_graph_under_grad(tiny):
    with recording_attention(tiny, resolve_layers(tiny, "all")) as store, torch.enable_grad():
        out = tiny(torch.randn(1, 4, 8, 8), 500, encoder_hidden_states=torch.randn(1, 77, 32)).sample
    probs = [store.records[n].probs for n in cross_attention_layers(tiny)]
    assert all(p.requires_grad for p in probs)
    assert probs[0].is_leaf and not probs[-1].is_leaf  # later layers depend on earlier ones
    grads = torch.autograd.grad(out.sum(), probs)
    assert all(g.abs().sum() > 0 for g in grads)


def test_processors_restored_after_an_exception(tiny):
    before = dict(tiny.attn_processors)
    with pytest.raises(RuntimeError, match="boom"), recording_attention(tiny, [TINY_LAST]):
        assert isinstance(tiny.attn_processors[TINY_LAST + ".processor"], ProbabilityProcessor)
        raise RuntimeError("boom")
    after = tiny.attn_processors
    assert list(after) == list(before) and all(after[k] is before[k] for k in before)


def test_unknown_layer_lists_the_cross_attention_layers(tiny):
    with pytest.raises(ConfigError) as err:
        resolve_layers(tiny, ["up_blocks.9.attentions.0.transformer_blocks.0.attn2"])
    assert TINY_LAST in str(err.value) and "up_blocks.9" in str(err.value)
    with pytest.raises(ConfigError):
        resolve_layers(tiny, ["up_blocks.2.attentions.1.transformer_blocks.0.attn1"])  # self-attention


def test_explicit_names_accept_the_processor_suffix(tiny):
    names = [TINY_LAST + ".processor", "down_blocks.0.attentions.0.transformer_blocks.0.attn2"]
    assert resolve_layers(tiny, names) == ["down_blocks.0.attentions.0.transformer_blocks.0.attn2", TINY_LAST]
