"""One validated config per method (bench/sd/config.py, method/config.py): unknown keys, enums, ranges, one error."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from baselines.blended_latent import BlendedLatent
from baselines.diffedit import DiffEdit, DiffEditConfig
from baselines.sdedit import SDEdit, SDEditConfig
from bench.config import CONF_DIR
from bench.sd.config import from_mapping
from bench.sd.errors import ConfigError
from method import config as mc
from method.config import GradSAMConfig, MaskConfig
from method.gradsam import ScoreInputs, importance_scores
from method.sampler import GradSAM
from tests.method.unets import TINY, build_unet

NAN, INF = math.nan, math.inf

# (key under `method`, its allowed values): every enum of the Grad-SAM config tree.
ENUMS = [
    ("init_latent", mc.INIT_LATENTS),
    ("ref_noise", mc.REF_NOISES),
    ("score.kind", mc.SCORE_KINDS),
    ("score.transform", mc.TRANSFORM_NAMES),
    ("score.target", mc.TARGETS),
    ("score.vjp_basis", mc.BASES),
    ("score.path", mc.PATHS),
    ("score.general_mode", mc.GENERAL_MODES),
    ("subject.index_mode", mc.INDEX_MODES),
    ("mask.threshold_scope", mc.SCOPES),
    ("mask.blur.stage", mc.STAGES),
    ("mask.dilation.stage", mc.STAGES),
]


def gradsam_with(key: str, value) -> GradSAM:
    """GradSAM with `method.<key>=value` (a dotted key is a nested node)."""
    head, *rest = key.split(".")
    if not rest:
        return GradSAM(**{head: value})
    node: dict = {}
    inner = node
    for part in rest[:-1]:
        inner = inner.setdefault(part, {})
    inner[rest[-1]] = value
    return GradSAM(**{head: node})


@pytest.mark.parametrize(("key", "allowed"), ENUMS, ids=[k for k, _ in ENUMS])
def test_each_enum_is_refused_with_its_allowed_values(key, allowed):
    with pytest.raises(ConfigError) as err:
        gradsam_with(key, "bogus")
    message = str(err.value)
    assert f"method.{key}='bogus' is not one of {list(allowed)}" in message
    assert "Fix: set method." in message
    for value in allowed:  # and every allowed value builds (box_sum_once needs nothing, stages mix freely)
        gradsam_with(key, value)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: GradSAM(strength=NAN), "method.strength=nan is not a finite number in (0, 1]"),
        (lambda: GradSAM(strength=INF), "method.strength=inf is not a finite number in (0, 1]"),
        (lambda: GradSAM(strength=-INF), "method.strength=-inf"),
        (lambda: BlendedLatent(strength=NAN), "method.strength=nan"),
        (lambda: SDEdit(strength=NAN), "method.strength=nan is not a finite number in (0, 1]"),
        (lambda: SDEdit(strength=INF), "method.strength=inf"),
        (lambda: DiffEdit(strength=NAN), "method.strength=nan"),
        (lambda: DiffEdit(mask_strength=INF), "method.mask_strength=inf"),
        (lambda: DiffEdit(mask_clamp_ratio=INF), "method.mask_clamp_ratio=inf is not a finite number > 0"),
        (lambda: DiffEdit(mask_threshold=NAN), "method.mask_threshold=nan is not a finite number in (0, 1)"),
        (lambda: GradSAM(mask={"threshold_k": NAN}), "method.mask.threshold_k=nan is not a finite number"),
        (lambda: GradSAM(mask={"threshold_k": INF}), "method.mask.threshold_k=inf is not a finite number"),
        (lambda: GradSAM(mask={"blur": {"sigma": NAN}}), "method.mask.blur.sigma=nan is not a finite number > 0"),
    ],
)
def test_non_finite_numbers_are_refused(make, message):
    with pytest.raises(ConfigError) as err:
        make()
    assert message in str(err.value)


def test_unknown_nested_key_is_refused_listing_the_known_ones():
    with pytest.raises(ConfigError) as err:
        GradSAM(mask={"blur": {"sigmaa": 1.0}})
    message = str(err.value)
    assert "method.mask.blur has unknown keys ['sigmaa']" in message
    assert "known: ['enabled', 'kernel', 'sigma', 'stage']" in message
    assert "did you mean 'sigma'" in message
    with pytest.raises(ConfigError, match=r"method\.score has unknown keys \['transfrom'\].*'vjp_basis'\]"):
        GradSAM(score={"transfrom": "abs"})
    with pytest.raises(ConfigError, match=r"method\.subject has unknown keys \['mode'\]; known: \['index_mode'\]"):
        GradSAM(subject={"mode": "clip_aligned"})


# Bad settings of every method and of every kind; several used to escape as TypeError or pass silently.
BAD = {
    "strength_out_of_range": lambda: GradSAM(strength=1.5),
    "strength_bool": lambda: GradSAM(strength=True),
    "strength_string": lambda: SDEdit(strength="0.6"),
    "indices_not_increasing": lambda: GradSAM(injection_indices=[18, 5]),
    "indices_empty": lambda: GradSAM(injection_indices=[]),
    "indices_float": lambda: GradSAM(injection_indices=[5.5]),
    "indices_not_a_list": lambda: GradSAM(injection_indices=5),
    "manipulate_string": lambda: GradSAM(manipulate="false"),
    "score_not_a_mapping": lambda: GradSAM(score="gradsam"),
    "layers_int": lambda: GradSAM(score={"layers": 3}),
    "layers_empty": lambda: GradSAM(score={"layers": []}),
    "chunk_size_string": lambda: GradSAM(score={"chunk_size": "8"}),
    "chunk_size_zero": lambda: GradSAM(score={"general_chunk_size": 0}),
    "kernel_even": lambda: GradSAM(mask={"dilation": {"kernel": 2}}),
    "box_sum_with_blur": lambda: GradSAM(mask={"box_sum_once": True, "dilation": {"enabled": False}}),
    "enum_not_a_string": lambda: GradSAM(score={"transform": ["abs"]}),
    "score_indices": lambda: BlendedLatent(score_indices=[3, 3]),
    "diffedit_draws": lambda: DiffEdit(mask_noise_draws=2.0),
    "diffedit_template": lambda: DiffEdit(target_prompt="{prompt} {0}"),
    "diffedit_template_type": lambda: DiffEdit(source_prompt=None),
    "diffedit_threshold_closed": lambda: DiffEdit(mask_threshold=1.0),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_every_refusal_is_one_error_type_naming_key_value_rule_and_fix(name):
    with pytest.raises(Exception) as err:  # noqa: PT011 - the type itself is what is tested
        BAD[name]()
    assert type(err.value) is ConfigError, f"{name}: {type(err.value).__name__}: {err.value}"
    message = str(err.value)
    assert message.startswith("method.") and "Fix:" in message


def test_blended_latent_messages_use_its_own_key():
    with pytest.raises(ConfigError) as err:
        BlendedLatent(score_indices=[3, 3])
    assert str(err.value).startswith("method.score_indices=[3, 3] is not")
    assert "injection_indices" not in str(err.value)


def test_constructor_defaults_are_the_config_defaults():
    assert GradSAM().config == from_mapping(GradSAMConfig, {}, "method") == GradSAMConfig()
    assert SDEdit().config == SDEditConfig()
    assert DiffEdit().config == DiffEditConfig()
    assert BlendedLatent().config == GradSAMConfig()


def test_lists_become_tuples_and_values_keep_their_type():
    method = GradSAM(injection_indices=[2, 4], score={"layers": ["a", "b"]}, mask={"threshold_k": 0})
    assert method.injection_indices == (2, 4) and method.config.score.layers == ("a", "b")
    assert method.config.mask.threshold_k == 0 and isinstance(method.config.mask.threshold_k, int)  # column as given
    assert isinstance(method.config.mask, MaskConfig) and method.config.mask.blur.sigma == 6.0


def test_default_columns_are_unchanged():
    assert GradSAM().columns() == {
        "strength": 0.9,
        "injection_indices": "5,18,28",
        "init_latent": "noise",
        "ref_noise": "shared",
        "manipulate": True,
        "score.kind": "gradsam",
        "score.layers": "last",
        "score.transform": "abs",
        "score.target": "eps_cond",
        "score.vjp_basis": "identity",
        "subject.index_mode": "clip_aligned",
        "mask.threshold_k": 0.5,
        "mask.threshold_scope": "per_channel",
        "mask.box_sum_once": False,
        "mask.blur": "k3_s6_on_score",
        "mask.dilation": "k3_x3_on_mask",
    }
    assert SDEdit(strength=0.9).columns() == {"strength": 0.9}
    assert list(DiffEdit().columns()) == [
        "strength",
        "mask_strength",
        "mask_noise_draws",
        "mask_clamp_ratio",
        "mask_threshold",
        "source_prompt",
        "target_prompt",
        "inversion_prompt",
        "sampler",
    ]


def test_public_score_entry_point_validates_by_the_same_rules():
    unet = build_unet(TINY)
    z, cond = torch.zeros(1, 4, 4, 4), torch.zeros(1, 77, unet.config.cross_attention_dim)
    for kwargs, key in (
        ({"path": "fast"}, "path"),
        ({"vjp_basis": "eye"}, "vjp_basis"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"layers": []}, "layers"),
    ):
        with pytest.raises(ConfigError) as public:
            importance_scores(ScoreInputs(unet, z, 780, cond, (1,)), kwargs)
        with pytest.raises(ConfigError) as sampler:
            GradSAM(score={key: kwargs[key]})
        assert str(public.value) == str(sampler.value)  # one rule, one message


METHOD_FILES = sorted((CONF_DIR / "method").glob("*.yaml"))


@pytest.mark.parametrize("path", METHOD_FILES, ids=[p.stem for p in METHOD_FILES])
def test_each_method_s_constructor_defaults_equal_its_yaml(path):
    """A method built from its conf/method file equals the one its constructor builds with no argument, and every
    key of the file is a constructor argument: a class copied from another cannot silently run other defaults."""
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    cls = get_class(node.pop("_target_"))
    parameters = inspect.signature(cls.__init__).parameters
    takes_more = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    assert takes_more or set(node) <= set(parameters), f"{path.name}: {set(node) - set(parameters)} are not arguments"
    from_yaml, from_defaults = cls(**node), cls()
    assert vars(from_yaml) == vars(from_defaults), f"{path.name} differs from {cls.__name__}()'s defaults"


def test_the_defaults_comparison_sees_a_changed_default(monkeypatch):
    """The test above fails when a constructor default drifts from its YAML (here GradSAM's strength)."""
    node = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "method" / "gradsam.yaml"), resolve=True)
    node.pop("_target_")
    node["strength"] = 0.8
    assert vars(GradSAM(**node)) != vars(GradSAM())
