"""The text pipeline (``encoders.TextEncoderMixin``) reused by a vision-language encoder that is
not open_clip: templates, synonyms, template averaging, truncation and the cache come for free.

The user's encoder below is about twenty lines: a bag-of-characters tokenizer and a random linear
text tower. Its ``encode_text`` is compared with a step-by-step computation written from
``docs/method.md`` §3 that never calls the pipeline or the tower module: per synonym, fill each
template, embed it (the histogram of its characters times the tower's weights), L2-normalise,
average over templates, normalise again; one row per synonym, in class order.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import encoders
from encoders import TextEncoderMixin, VisionLanguageEncoder

CONTEXT = 24  # token positions; longer prompts are cut, as CLIP's tokenizer cuts at 77


class CharCLIP(TextEncoderMixin):
    """A user's vision-language encoder: character codes as tokens, a linear text tower."""

    patch_size = 4

    def __init__(self, seed=0, width=6, truncate=False, **text_options):
        torch.manual_seed(seed)
        self.text_tower = torch.nn.Linear(127, width)  # a histogram of codes 1..127 -> (D,)
        self.image_tower = torch.nn.Linear(3, width)
        self.device, self.truncate = torch.device("cpu"), truncate
        self.init_text(**{"text_batch_size": 2, "progress": False, **text_options})

    def tokenize(self, prompts):
        ids = torch.zeros(len(prompts), CONTEXT, dtype=torch.long)  # 0 pads
        for i, prompt in enumerate(prompts):
            codes = [ord(c) % 127 + 1 for c in prompt[:CONTEXT]]
            ids[i, : len(codes)] = torch.tensor(codes)
        return ids

    def embed_tokens(self, tokens):
        return self.text_tower(F.one_hot(tokens, 128).sum(dim=1)[:, 1:].float())  # padding ignored

    def prompt_lengths(self, tokens):  # padding changes nothing, so a batch may stop at its longest prompt
        return (tokens != 0).sum(dim=1) if self.truncate else None

    def text_cache_namespace(self):
        return encoders.cache_namespace("char-clip", torch.float32, self.text_tower.state_dict().items())

    def dense_features(self, images):
        pooled = F.avg_pool2d(images, self.patch_size, ceil_mode=True).permute(0, 2, 3, 1)
        return F.normalize(self.image_tower(pooled), dim=-1)


def straightforward(encoder, class_names, templates):
    """§3 by hand: rows (E, D), class of each row, synonyms."""
    weight = encoder.text_tower.weight.detach().double()
    bias = encoder.text_tower.bias.detach().double()
    rows, classes, synonyms = [], [], []
    for c, entry in enumerate(class_names):
        for synonym in entry.split(";"):
            synonym = synonym.strip()
            per_template = []
            for template in templates:
                prompt = template.replace("{}", synonym) if isinstance(template, str) else template(synonym)
                histogram = torch.zeros(127, dtype=torch.float64)
                for char in prompt[:CONTEXT]:
                    histogram[ord(char) % 127] += 1
                e = weight @ histogram + bias
                per_template.append(e / e.norm())
            mean = torch.stack(per_template).mean(dim=0)
            rows.append(mean / mean.norm())
            classes.append(c)
            synonyms.append(synonym)
    return torch.stack(rows), classes, synonyms


TEMPLATES = ("a photo of a {}.", "{} in the wild, a long prompt cut at the context", lambda name: f"itap {name}")
NAMES = ["road", " car ", "sky; cloud;mist"]


def test_a_second_family_gets_the_published_text_embeddings():
    encoder = CharCLIP(templates=TEMPLATES, text_cache=False)
    assert isinstance(encoder, VisionLanguageEncoder)
    result = encoder.encode_text(NAMES)
    rows, classes, synonyms = straightforward(encoder, NAMES, TEMPLATES)
    torch.testing.assert_close(result.embeddings.double(), rows, atol=1e-6, rtol=0)
    assert result.class_index.tolist() == classes == [0, 1, 2, 2, 2]
    assert result.synonyms == tuple(synonyms) == ("road", "car", "sky", "cloud", "mist")
    assert result.class_names == ("road", "car", "sky;cloud;mist")
    assert result.embeddings.dtype == torch.float32
    # the averaging is over templates, not a single template's embedding
    single = straightforward(encoder, NAMES, TEMPLATES[:1])[0]
    assert (result.embeddings.double() - single).abs().max() > 0.05


def test_the_default_templates_are_clips_80():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    encoder = CharCLIP(templates=None, text_cache=False, text_batch_size=64)
    assert len(encoder.templates) == 80
    rows, _, _ = straightforward(encoder, ["cat"], OPENAI_IMAGENET_TEMPLATES)
    torch.testing.assert_close(encoder.encode_text(["cat"]).embeddings.double(), rows, atol=1e-6, rtol=0)


def test_truncation_is_the_same_as_the_full_context():
    """With ``prompt_lengths``, each batch runs only up to its longest prompt, in length order."""
    seen = []
    full = CharCLIP(templates=TEMPLATES, text_cache=False)
    short = CharCLIP(templates=TEMPLATES, text_cache=False, truncate=True)
    original = short.embed_tokens
    short.embed_tokens = lambda tokens: seen.append(tokens.shape[1]) or original(tokens)
    torch.testing.assert_close(short.encode_text(NAMES).embeddings, full.encode_text(NAMES).embeddings,
                               atol=1e-6, rtol=0)
    assert min(seen) < CONTEXT and seen == sorted(seen)  # shortest prompts first, cut short


def spy_on_encoding(encoder, monkeypatch):
    spy = mock.Mock(wraps=encoder.encode_prompts)
    monkeypatch.setattr(encoder, "encode_prompts", spy)
    return spy


def prompt_counts(spy):
    """How many prompts each call of the watched ``encode_prompts`` encoded."""
    return [len(call.args[0]) for call in spy.call_args_list]


def test_the_cache_serves_a_second_family(monkeypatch, tmp_path):
    """Memory: only new synonyms are encoded. Disk: the same weights and templates read the file,
    other weights or other templates never hit."""
    first = CharCLIP(templates=TEMPLATES, text_cache=tmp_path)
    spy = spy_on_encoding(first, monkeypatch)
    a = first.encode_text(["road", "car"])
    b = first.encode_text(["car", "road;street"])
    assert prompt_counts(spy) == [2 * len(TEMPLATES), 1 * len(TEMPLATES)]
    assert torch.equal(b.embeddings[0], a.embeddings[1]) and torch.equal(b.embeddings[1], a.embeddings[0])
    (path,) = tmp_path.glob("char-clip-float32-*.npz")
    with np.load(path, allow_pickle=False) as data:
        assert data["embeddings"].shape == (3, 6)

    again = CharCLIP(templates=TEMPLATES, text_cache=tmp_path)
    again.encode_prompts = None  # served from the disk file: encoding anything would fail
    assert torch.equal(again.encode_text(["road;street"]).embeddings, b.embeddings[1:])

    other_weights = CharCLIP(seed=1, templates=TEMPLATES, text_cache=tmp_path)
    spy_weights = spy_on_encoding(other_weights, monkeypatch)
    other_weights.encode_text(["road"])
    other_templates = CharCLIP(templates=TEMPLATES[:2], text_cache=tmp_path)
    spy_templates = spy_on_encoding(other_templates, monkeypatch)
    other_templates.encode_text(["road"])
    assert prompt_counts(spy_weights) == [len(TEMPLATES)] and prompt_counts(spy_templates) == [2]
    assert len(list(tmp_path.glob("*.npz"))) == 2  # the seed-1 weights have their own file


def test_an_encoder_that_takes_strings_overrides_encode_prompts():
    """A model with its own tokenizer inside replaces the batching, and keeps the rest."""

    class StringTower(CharCLIP):
        def encode_prompts(self, prompts):
            return F.normalize(self.embed_tokens(self.tokenize(list(prompts))), dim=-1).detach()

    encoder = StringTower(templates=TEMPLATES, text_cache=False)
    rows, _, _ = straightforward(encoder, NAMES, TEMPLATES)
    torch.testing.assert_close(encoder.encode_text(NAMES).embeddings.double(), rows, atol=1e-6, rtol=0)


def test_missing_hooks_and_bad_settings_are_clear_errors():
    class NoTower(TextEncoderMixin):
        def __init__(self):
            self.device = torch.device("cpu")
            self.init_text(templates=["{}"], text_cache=False)

        def text_cache_namespace(self):
            return "none"

    with pytest.raises(NotImplementedError, match="NoTower must define tokenize"):
        NoTower().encode_text(["road"])
    with pytest.raises(ValueError, match="text_batch_size must be a positive integer"):
        CharCLIP(templates=TEMPLATES, text_cache=False, text_batch_size=0)
    with pytest.raises(TypeError, match="text_batch_size must be a positive integer, got float 8.0"):
        CharCLIP(templates=TEMPLATES, text_cache=False, text_batch_size=8.0)
    with pytest.raises(ValueError, match="no '\\{\\}'"):
        CharCLIP(templates=["a photo"], text_cache=False)
    with pytest.raises(ValueError, match="prompts must be a non-empty list"):
        CharCLIP(templates=TEMPLATES, text_cache=False).encode_prompts([])
    with pytest.raises(TypeError, match="prompts must be a list of strings, got one string 'a road'"):
        CharCLIP(templates=TEMPLATES, text_cache=False).encode_prompts("a road")
