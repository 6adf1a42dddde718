"""The ``evostream`` command line: commands that present what the services, views and wiring (``evostream.wiring``)
return.

One module per concern (stack, serve/publish/process, readers, contract, calibrate, demo, selfcheck, governance,
rollout);
this module only assembles their commands into one Typer app, so ``evostream = "evostream.cli:app"`` keeps working."""

from __future__ import annotations

import typer

from evostream.cli import (
    api,
    calibrate,
    contract,
    demo,
    evolution,
    feedback,
    governance,
    labels,
    readers,
    risk,
    rollout,
    rollout_control,
    route,
    route_learn,
    savings,
    selfcheck,
    serve,
    sinks,
    status,
    template,
    up,
)
from evostream.cli.stack import stack_app

app = typer.Typer(
    help="evostream: watch, profile, evolve and govern language models on Apache Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(stack_app, name="stack")
app.add_typer(contract.schemas_app, name="schemas")
app.add_typer(governance.governance_app, name="governance")
app.add_typer(governance.registry_app, name="registry")
app.add_typer(evolution.evolution_app, name="evolution")
app.add_typer(sinks.sinks_app, name="sinks")
app.add_typer(risk.risk_app, name="risk")
app.add_typer(template.template_app, name="template")
route.route_app.command("train")(route_learn.train)
route.route_app.command("eval")(route_learn.eval_)
app.add_typer(route.route_app, name="route")
rollout.rollout_app.command("control")(rollout_control.control)
app.add_typer(rollout.rollout_app, name="rollout")
for command in (
    selfcheck.selfcheck,
    demo.demo,
    serve.serve,
    serve.publish,
    serve.process,
    calibrate.calibrate,
    readers.alerts,
    readers.drift,
    readers.profile,
    contract.topics,
    governance.register,
    governance.validate,
    governance.approve,
    governance.promote,
    governance.rollback,
    governance.audit,
    governance.provenance,
    evolution.evolve,
    evolution.analyze,
    sinks.query,
    api.api,
    feedback.feedback,
    risk.rescore,
    savings.savings,
    labels.reference_labels,
    rollout_control.compare,
    up.up,
    up.genesis,
    status.status,
):
    app.command()(command)
app.command("replay")(governance.replay_cmd)
app.command("request-approval")(governance.request_approval)

__all__ = ["app"]
