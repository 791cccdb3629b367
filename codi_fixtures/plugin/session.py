"""The per-process session object: settings, and the model, problems and studies built lazily."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from codi_fixtures.config import BUNDLED_CHECKPOINT, TIERS, Settings, tier_of_markexpr
from codi_fixtures.errors import CodiError
from codi_fixtures.plugin import gcpolicy

__all__ = ["SESSION_KEY", "CodiSession", "collection_shape"]

SESSION_KEY = pytest.StashKey["CodiSession"]()


def collection_shape(settings: Settings) -> tuple[int, int | None]:
    """(thoughts, layers) read cheaply from codi.json / config.json, for test ids."""
    ckpt = Path(settings.model.ckpt or BUNDLED_CHECKPOINT)
    n_thoughts = 6
    spec = ckpt / "codi.json"
    if spec.is_file():
        try:
            n_thoughts = int(json.loads(spec.read_text()).get("n_thoughts", 6))
        except (ValueError, AttributeError):
            pass  # reported properly when the model loads
    from codi_fixtures.models import n_layers as depth

    return n_thoughts, depth(settings.model)


@dataclass
class CodiSession:
    """Lazily built, shared, read-only study objects for one pytest process."""

    config: pytest.Config
    settings: Settings
    started: float = field(default_factory=time.monotonic)
    _model: Any = None
    _pool: Any = None
    _studies: dict[str, Any] = field(default_factory=dict)
    _analyses: dict[str, Any] = field(default_factory=dict)
    _registered: tuple[Any, ...] | None = None
    _wanted: frozenset[str] | None = None  # analyses the collected claims read; None: all
    _failures: dict[str, Any] = field(default_factory=dict)
    _crash_logs: dict[str, str] = field(default_factory=dict)  # cause digest -> its log
    _validated: bool = False

    def tiers(self) -> list[str]:
        """The tiers this run selects (both when the mark expression names neither)."""
        selected = tier_of_markexpr(self.config.option.markexpr or "")
        return [selected] if selected in TIERS else list(TIERS)

    def validate_inputs(self) -> None:
        """Cheap checks of every option before any test runs; problems become usage errors.

        The checkpoint is checked (readable weights) before the problem set is considered.
        """
        from codi_fixtures.model.architecture import layer_roles
        from codi_fixtures.model.devices import resolve_device, resolve_dtype
        from codi_fixtures.models import probe_model
        from codi_fixtures.study.interventions import parse_site

        if self._validated:
            return
        settings = self.settings
        try:
            resolve_dtype(settings.model.dtype, resolve_device(self._device()))
            probe_model(settings.model)
            _, n_layers = collection_shape(settings)
            if n_layers is not None:
                try:
                    layer_roles(n_layers, settings.layers)
                except ValueError as err:
                    raise CodiError(f"--layers: {err}") from None
                try:
                    parse_site(settings.run.site, n_layers)
                except ValueError as err:
                    raise CodiError(f"--ablation-site: {err}") from None
            for tier in self.tiers():  # every selected tier can be sampled from the source
                self.problems(tier)
            _check_writable(settings.cache_dir)
        except CodiError as err:
            raise pytest.UsageError(str(err)) from None
        self._validated = True

    def _device(self) -> str:
        device = self.settings.model.device
        worker = os.environ.get("PYTEST_XDIST_WORKER", "")
        if device == "auto" and worker.startswith("gw"):
            import torch

            if torch.cuda.device_count() > 1:  # one GPU per xdist worker
                return f"cuda:{int(worker[2:]) % torch.cuda.device_count()}"
        return device

    def model(self) -> Any:
        """The CODI model (loaded once)."""
        if self._model is None:
            from dataclasses import replace

            from codi_fixtures.models import load_model

            self._model = load_model(replace(self.settings.model, device=self._device()))
            gcpolicy.long_lived_ready()
        return self._model

    def problem_pool(self) -> list[Any]:
        """Every problem of the configured source."""
        if self._pool is None:
            from codi_fixtures.study.data import load_problems

            path = self.settings.problems
            if path is None:
                ckpt = Path(self.settings.model.ckpt or BUNDLED_CHECKPOINT)
                path = ckpt / "eval.jsonl"
                if not path.exists():
                    raise CodiError(
                        f"no --problems given and {ckpt} ships no eval.jsonl; pass --problems "
                        "PATH (e.g. GSM8K test.jsonl) for this checkpoint"
                    )
            self._pool = load_problems(path)
        return self._pool

    def problems(self, tier: str) -> list[Any]:
        """The tier's stratified sample (a :class:`CodiError` names the problem and the fix)."""
        from codi_fixtures.study.data import stratified_sample

        return stratified_sample(
            self.problem_pool(), self.settings.tiers[tier], seed=self.settings.run.seed
        )

    def registered_analyses(self) -> tuple[Any, ...]:
        """RQ1, RQ2, RQ5, RQ6 and every analysis a ``pytest_codi_analyses`` hook adds."""
        if self._registered is None:
            from codi_fixtures.analyses import BUILTIN_ANALYSES

            extra = self.config.hook.pytest_codi_analyses(config=self.config)
            registered = (*BUILTIN_ANALYSES, *(a for batch in extra for a in batch))
            names = [a.name for a in registered]
            duplicate = next((n for n in names if names.count(n) > 1), None)
            if duplicate is not None:
                raise CodiError(f"two analyses are named {duplicate!r}; names must be unique")
            self._registered = registered
        return self._registered

    def select_analyses(self, wanted: frozenset[str] | None) -> None:
        """Compute only the analyses the collected claims read (None: every registered one).

        Called once collection is final (after ``-k`` / ``-m``), from the claims'
        ``codi_analyses`` marks: ``pytest experiments -k rq1`` computes RQ1's conditions only.
        """
        if wanted is not None:
            known = {a.name for a in self.registered_analyses()}
            unknown = sorted(wanted - known)
            if unknown:
                raise CodiError(
                    f"claims ask for analyses {unknown} that no one registered (registered: "
                    f"{sorted(known)}); fix the codi_analyses mark or register the analysis "
                    "with the pytest_codi_analyses hook"
                )
        self._wanted = wanted

    def selected_analyses(self) -> tuple[Any, ...]:
        """The registered analyses this run computes, in registration (= report) order."""
        registered = self.registered_analyses()
        if self._wanted is None:
            return registered
        return tuple(a for a in registered if a.name in self._wanted)

    def study(self, tier: str) -> Any:
        """Cached study results for the tier (computed once across processes)."""
        if tier not in self._studies:
            from codi_fixtures.analyses import requirements_of
            from codi_fixtures.study.runs import compute_study, dimensions_of

            model = self.model()
            needs = requirements_of(self.selected_analyses(), self.settings, dimensions_of(model))
            self._studies[tier] = compute_study(
                model, self.problems(tier), self._run_config(needs), self.settings.cache_dir, needs
            )
            gcpolicy.long_lived_ready()
        return self._studies[tier]

    def loaded_analyses(self) -> dict[str, Any]:
        """The analyses this process computed, by study fingerprint (for the report)."""
        return {a.results.meta["fingerprint"]: a for a in self._analyses.values()}

    def _run_config(self, needs: Any) -> Any:
        """The run config, with RQ4's value domain taken from the whole problem source.

        So the quick and full samples of one source replay counterfactuals under one rule
        (a 10-problem sample's own range is narrower than the task's).
        """
        from dataclasses import replace

        from codi_fixtures.study.conditions import Interchange
        from codi_fixtures.study.interchange import ValueDomain

        if not any(isinstance(c, Interchange) for c in needs.conditions):
            return self.settings.run
        domain = ValueDomain.of(self.problem_pool())
        return replace(
            self.settings.run, value_domain=None if domain is None else domain.as_tuple()
        )

    def analysis(self, tier: str) -> Any:
        """Statistics over the tier's study; if it cannot be computed, :class:`StudyFailure`.

        The failure is recorded once (full traceback in a log file) and every later call
        returns it at once, so a broken study costs one attempt, not one per claim.
        """
        if tier not in self._analyses and tier not in self._failures:
            from codi_fixtures.analyses import StudyAnalysis

            try:
                self._analyses[tier] = StudyAnalysis.for_run(
                    self.study(tier), self.settings, self.selected_analyses()
                )
            except Exception as err:
                self._failures[tier] = self._record_failure(tier, err)
        return self._analyses[tier] if tier in self._analyses else self._failures[tier]

    def _record_failure(self, tier: str, err: Exception) -> Any:
        from codi_fixtures.plugin.outcomes import StudyFailure

        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        log_path = self.settings.cache_dir / "errors" / f"study-{tier}-{worker}.log"
        cause, where = describe_exception(err)
        return StudyFailure(tier, cause, where, write_traceback(err, log_path))

    def record_crash(self, err: BaseException) -> Any:
        """A claim's crash, its full traceback written once per distinct cause and place."""
        import hashlib

        from codi_fixtures.plugin.outcomes import ClaimCrash

        cause, where = describe_exception(err)
        digest = hashlib.sha256(f"{cause}\n{where}".encode()).hexdigest()[:12]
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        log_path = self.settings.cache_dir / "errors" / f"claim-{digest}-{worker}.log"
        if digest not in self._crash_logs:
            self._crash_logs[digest] = write_traceback(err, log_path)
        return ClaimCrash(cause, where, self._crash_logs[digest])


def _check_writable(cache_dir: Path) -> None:
    """The cache folder can be created and written, else a :class:`CodiError` naming it."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = f"{err.strerror or err} ({err.filename})"
    else:
        if os.access(cache_dir, os.W_OK | os.X_OK):
            return
        reason = "not writable"
    raise CodiError(
        f"cannot use {cache_dir} as the study cache: {reason}; pass --codi-cache DIR in a "
        "writable place"
    )


def describe_exception(err: BaseException) -> tuple[str, str]:
    """(one-line cause, innermost project frame as "file:line in function") of ``err``."""
    import traceback

    frames = traceback.extract_tb(err.__traceback__)
    own = [f for f in frames if "codi_fixtures" in f.filename] or frames
    where = f"{own[-1].filename}:{own[-1].lineno} in {own[-1].name}" if own else "?"
    message = " ".join(str(err).split())
    cause = message if isinstance(err, CodiError) else f"{type(err).__name__}: {message}"
    return cause[:300], where


def write_traceback(err: BaseException, path: Path) -> str:
    """Write the full traceback of ``err`` atomically; return where it went.

    ``path`` first; where that cannot be written (an unwritable or full cache folder, often
    the very cause of the failure) the system's temporary folder; if neither, a note saying
    so. Never raises: recording a failure must not become a second failure.
    """
    import tempfile
    import traceback

    from codi_fixtures.atomic import atomic_write_text

    text = "".join(traceback.format_exception(err))
    problems = []
    for target in (path, Path(tempfile.gettempdir()) / "codi-errors" / path.name):
        try:
            atomic_write_text(target, text)
        except OSError as failure:
            problems.append(f"{target}: {failure.strerror or failure}")
        else:
            return str(target)
    return f"(not written: {'; '.join(problems)})"
