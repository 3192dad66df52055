"""Guards of the method registry: a method file is all a method takes. Every registered method is complete and its
option group is in ModelParams, every preset is reachable from Python, the command line and the docs, and an unknown
or incomplete method fails when the params are built, naming what is missing."""

from __future__ import annotations

import functools
import importlib
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator, Sequence, Tuple

import attr
import attrs
import pytest
from torch import Tensor, nn

import selfsup
from selfsup.cli import reference, train
from selfsup.config import PRESETS, ModelParams
from selfsup.methods import REGISTRY, Method, methods, register
from selfsup.methods.criteria import PairFunctionCriterion, PairwiseCriterion, as_terms
from selfsup.methods.options import LOSS_TYPE_NAMES, SharedParams
from selfsup.methods.steps import TrainingStep
from selfsup.options import option

ROOT = Path(__file__).resolve().parent.parent
NO_QUEUE = dict(use_negative_examples_from_queue=False)


@pytest.mark.parametrize("method", methods(), ids=lambda m: type(m).__name__)
def test_every_registered_method_is_complete_and_its_options_are_in_model_params(method):
    assert method.missing() == [] and method.loss_types
    fields = attr.fields_dict(ModelParams)
    if method.options is not None:
        assert issubclass(ModelParams, method.options)
        assert all(f.name in fields for f in attr.fields(method.options))
    for preset in method.presets:  # every field a preset sets is a field, and its params select the method
        assert set(preset.fields) <= set(fields) and PRESETS[preset.key]().method is method


def test_every_loss_type_and_alias_names_a_registered_method():
    assert set(LOSS_TYPE_NAMES) == set(REGISTRY) and set(LOSS_TYPE_NAMES.values()) <= set(REGISTRY)
    assert {old: LOSS_TYPE_NAMES[old] for old in ("ce", "bce", "ip", "neg_cos", "barlow", "vic")} == {
        "ce": "contrastive", "bce": "binary_contrastive", "ip": "byol", "neg_cos": "simsiam",
        "barlow": "barlow_twins", "vic": "vicreg"}


@pytest.mark.parametrize("key", sorted(PRESETS))
def test_every_preset_is_reachable_from_python_the_command_line_and_the_docs(key):
    function = PRESETS[key]
    name = function.__name__
    face = importlib.import_module("model_params")
    assert getattr(selfsup, name) is function and getattr(face, name) is function and name in selfsup.__all__
    parsed = train.parse(train.build_parser(), ["--preset", key])
    assert train.params_from_config(parsed) == function()
    assert f"| `{name}` | `{key}` |" in (ROOT / "README.md").read_text()
    assert f"def {name}(**overrides: Any) -> ModelParams:" in (ROOT / reference.PRESETS_STUB).read_text()


@pytest.fixture
def scratch_registry() -> Iterator[None]:
    """Methods registered by a test are forgotten after it."""
    registry, names = dict(REGISTRY), dict(LOSS_TYPE_NAMES)
    yield
    REGISTRY.clear(), REGISTRY.update(registry)
    LOSS_TYPE_NAMES.clear(), LOSS_TYPE_NAMES.update(names)


def test_an_unknown_loss_type_names_the_registered_ones():
    with pytest.raises(ValueError, match=r"ModelParams\.loss_type: got 'tico2'; allowed values are 'barlow_twins'"):
        ModelParams(loss_type="tico2")


def test_a_method_without_a_step_fails_when_its_params_are_built(scratch_registry):
    @register
    class Stepless(Method):
        loss_types = ("stepless",)

    with pytest.raises(ValueError, match=r"ModelParams\.loss_type: 'stepless' selects the method Stepless "
                                         r"\(.*test_registry\.py\), which is incomplete: a step: implement criterion"):
        ModelParams(loss_type="stepless", **NO_QUEUE)


def _distance(a: Tensor, b: Tensor, scale: float) -> Tensor:
    return scale * (a - b).pow(2).sum(dim=1).mean()


def test_a_method_reading_a_field_it_does_not_declare_fails_when_its_params_are_built(scratch_registry):
    @register
    class Undeclared(Method):
        loss_types = ("undeclared",)

        def criterion(self, p: SharedParams, pairs: Sequence[Tuple[int, int]], reduction: str,
                      factor: float) -> PairwiseCriterion:
            scale = p.undeclared_scale  # type: ignore[attr-defined]
            return PairFunctionCriterion(pairs, reduction, factor, as_terms(functools.partial(_distance, scale=scale)))

    with pytest.raises(ValueError, match=r"which reads the field 'undeclared_scale', declared by no option group"):
        ModelParams(loss_type="undeclared", **NO_QUEUE)


def test_an_attribute_error_of_another_object_is_not_taken_for_an_undeclared_field(scratch_registry):
    @register
    class Broken(Method):
        loss_types = ("broken",)

        def criterion(self, p: SharedParams, pairs: Sequence[Tuple[int, int]], reduction: str,
                      factor: float) -> PairwiseCriterion:
            return None.scale  # type: ignore[attr-defined, return-value]  # a bug of the method, not of the params

    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'scale'"):
        ModelParams(loss_type="broken", **NO_QUEUE)


def test_a_method_registered_after_model_params_names_its_missing_option_group(scratch_registry):
    @attrs.frozen(kw_only=True, slots=False)
    class LateOptions:
        """Late"""

        late_scale: float = option(1.0, "a field ModelParams was assembled without")

    @register
    class Late(Method):
        loss_types = ("late",)
        options = LateOptions

        def criterion(self, p: SharedParams, pairs: Sequence[Tuple[int, int]], reduction: str,
                      factor: float) -> PairwiseCriterion:
            return PairFunctionCriterion(pairs, reduction, factor, as_terms(functools.partial(_distance, scale=1.0)))

    with pytest.raises(ValueError, match=r"its option group LateOptions is not among the params' fields"):
        ModelParams(loss_type="late", **NO_QUEUE)


def test_a_method_with_its_own_step_builds_params(scratch_registry):
    """A method of another shape defines step() instead of a criterion; its params build (the joint-embedding dry
    run is its own to override)."""
    @register
    class OwnStep(Method):
        loss_types = ("own_step",)

        def step(self, p: SharedParams, encoder: nn.Module) -> TrainingStep[Any]:
            raise NotImplementedError  # never called while params are built

    assert OwnStep().missing() == [] and ModelParams(loss_type="own_step", **NO_QUEUE).loss_type == "own_step"


def test_registering_a_taken_name_or_an_alias_of_nothing_is_refused(scratch_registry):
    class Taken(Method):
        loss_types = ("byol",)

    with pytest.raises(ValueError, match="loss_type 'byol' is registered twice: BYOL, Taken"):
        register(Taken)

    class Dangling(Method):
        loss_types = ("dangling",)
        aliases = {"old": "other"}

    with pytest.raises(ValueError, match=r"Dangling\.aliases: 'old' names 'other'"):
        register(Dangling)

    class Nameless(Method):
        pass

    with pytest.raises(TypeError, match="Nameless declares no loss_types"):
        register(Nameless)


NEW_METHOD = '''
    """A method added as one file (the registry test writes it into a copy of the package)."""

    import functools

    import attrs
    from torch import Tensor, nn

    from selfsup.methods.criteria import PairFunctionCriterion, as_terms
    from selfsup.methods.method import Method
    from selfsup.methods.options import options_of
    from selfsup.methods.preset import NO_NEGATIVES, Preset
    from selfsup.methods.registry import register
    from selfsup.options import option


    def scaled_distance(a: Tensor, b: Tensor, scale: float) -> Tensor:
        return scale * (a - b).pow(2).sum(dim=1).mean()


    @attrs.frozen(kw_only=True, slots=False)
    class NewOptions:
        """New"""

        new_scale: float = option(2.0, "the new method's scale", low=0)


    @register
    class New(Method):
        loss_types = ("new",)
        options = NewOptions
        presets = (Preset(name="NewParams", key="new", paper="none", summary="a test", doc="A test.",
                          fields=dict(loss_type="new", use_lagging_model=False, **NO_NEGATIVES)),)

        def criterion(self, p, pairs, reduction, factor):
            scale = options_of(p, NewOptions).new_scale
            return PairFunctionCriterion(pairs, reduction, factor, as_terms(functools.partial(scaled_distance,
                                                                                             scale=scale)))
'''


@pytest.mark.slow
def test_a_new_method_file_is_all_it_takes(tmp_path):
    """In a copy of the package, one new file in selfsup/methods/ gives the loss_type, its fields in ModelParams, the
    preset in Python and on the command line, and the generated docs and stub."""
    shutil.copytree(ROOT / "selfsup", tmp_path / "selfsup", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    (tmp_path / "selfsup" / "methods" / "new.py").write_text(textwrap.dedent(NEW_METHOD))
    code = textwrap.dedent("""
        from selfsup import NewParams, ModelParams
        from selfsup.cli import reference, train
        params = NewParams(new_scale=3.0)
        assert params.loss_type == "new" and ModelParams(loss_type="new", new_scale=3.0,
            use_lagging_model=False, use_negative_examples_from_queue=False) == params
        parsed = train.parse(train.build_parser(), ["--preset", "new", "--new_scale", "4"])
        assert train.params_from_config(parsed).new_scale == 4.0
        reference.main(".")
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
    assert "def NewParams(**overrides: Any) -> ModelParams:" in (tmp_path / reference.PRESETS_STUB).read_text()
    assert "from selfsup.methods.new import NewOptions" in (tmp_path / reference.PARAMS_STUB).read_text()
    assert "| `new_scale` |" in (tmp_path / "docs" / "options.md").read_text()
    assert "| `NewParams` | `new` |" in (tmp_path / "README.md").read_text()
