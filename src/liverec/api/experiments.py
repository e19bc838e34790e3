"""Live experiments of an app: create, list, read (with per-variant metrics), stop.

Reading needs the ``read`` scope (an ``admin`` key has it too): the recommendation answers a
``read`` key gets already name the experiment and variant, and the metrics are aggregates
with no user's data. Creating and stopping change what every user is served: ``admin``.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Path

from ..auth import ADMIN, READ
from ..experiments.live import ExperimentInvalid, LiveExperiments
from ..service import Service
from .auth import requires
from .deps import get_app_id, get_service, validation_error
from .schemas import ExperimentIn, ExperimentList, ExperimentOut, errors

router = APIRouter(prefix="/v1", tags=["experiments"])

EXPERIMENT_ID = Path(description="The experiment's id (`exp_...`)")


def _live(service: Service) -> LiveExperiments:
    live = service.experiments
    assert isinstance(live, LiveExperiments)
    return live


def _not_found(experiment_id: str, app: str) -> HTTPException:
    return HTTPException(404, detail={"errors": [{"field": "experiment_id", "value": experiment_id,
                                                  "expected": f"an experiment of app '{app}'"}]})


@router.get("/experiments", response_model=ExperimentList, responses=errors(400))
@requires(READ)
def list_experiments(app: str = Depends(get_app_id), service: Service = Depends(get_service)) -> dict:
    """The app's experiments, newest first, each with its variants and their metrics."""
    return {"app": app, "experiments": _live(service).list(app)}


@router.post("/experiments", response_model=ExperimentOut, responses=errors(400, 422))
@requires(ADMIN)
def create_experiment(body: ExperimentIn, app: str = Depends(get_app_id), service: Service = Depends(get_service)) -> dict:
    """Start an experiment: every worker serves its variants from its next request.
    Experiments running in one app share its users, each user in the oldest one whose
    `traffic` takes them (one with traffic 1 takes them all while it runs)."""
    variants = [v.model_dump(exclude_none=True) | {"ranking": v.ranking.model_dump(exclude_none=True)} for v in body.variants]
    try:
        return _live(service).create(app, body.name, body.kind, variants, body.traffic, body.window_s, body.confidence)
    except ExperimentInvalid as exc:
        raise validation_error(exc.errors) from None


@router.get("/experiments/{experiment_id}", response_model=ExperimentOut, responses=errors(400, 404))
@requires(READ)
def get_experiment(experiment_id: str = EXPERIMENT_ID, app: str = Depends(get_app_id),
                   service: Service = Depends(get_service)) -> dict:
    """One experiment with its variants' metrics and the verdict."""
    view = _live(service).view(app, experiment_id)
    if view is None:
        raise _not_found(experiment_id, app)
    return view


@router.post("/experiments/{experiment_id}/stop", response_model=ExperimentOut, responses=errors(400, 404))
@requires(ADMIN)
def stop_experiment(experiment_id: str = EXPERIMENT_ID, app: str = Depends(get_app_id),
                    service: Service = Depends(get_service)) -> dict:
    """Stop it: users get the app's own configuration again; its metrics stay readable."""
    view = _live(service).stop_experiment(app, experiment_id)
    if view is None:
        raise _not_found(experiment_id, app)
    return view
