"""The principals of a secured deployment and the ACLs each one gets: least privilege, derived
from the topic prefix, so deployments (and test runs) under different prefixes stay apart.

* operator: writes campaign-control, campaign-status, campaign-canary (`estop release`) and
  audit; reads them, the acks, the
  outcomes and the dispatchers' ledgers (`estop stop`, `estop status`); sees the worker groups'
  members and their partitions (confirmation); reads and writes guardrail-rules (`estop rules`),
  writes feedback and reads guardrail-state (the API's feedback and rule values).
* control: the operator's rights, plus the control plane's own group and internal topics, and
  what a relaunch writes (send-requests.*, notsent).
* worker (gates, dispatchers): reads send-requests.*, dispatch.* and campaign-control; writes
  dispatch.*, sent, notsent, failed, the acks and its dead letters; reads and writes the
  dispatchers' ledgers and receipts (dispatch.*.ledger, dispatch.*.receipts); its groups and
  transactional ids by prefix.
* analytics (the sink): reads the outcomes, the lifecycle, the stops, their acks and the audit;
  its group; its dead letters.
* engine (the campaign engine, `estop launch`): writes send-requests.*, its campaign's lifecycle
  and notSent for requests it never queued, its canary launches; reads campaign-control,
  campaign-status and campaign-canary.
* mta (the MTA agent beside an MTA, `estop mta agent`): writes dispatch.email.receipts (the MTA's
  log, shipped to the dispatchers that own the messages); nothing else.
* guardrail (`estop worker --role guardrail`): reads the outcomes, feedback and the rules;
  reads and writes its counts and its state changelog (its groups and transactional ids by
  prefix); stops a campaign as a person does: writes campaign-control, campaign-status and
  audit, reads the acks and sees the worker groups (confirmation).

Only operator, control and guardrail may write campaign-control: nobody else can stop a
campaign."""

from __future__ import annotations

from dataclasses import dataclass

from streams.models import CHANNELS
from streams.settings import Settings

ROLES = ("operator", "control", "worker", "analytics", "engine", "mta", "guardrail")
# Assign-only readers (control view, whole-topic reads) carry a throwaway group id of this prefix.
READER_GROUP_PREFIX = "estop-reader-"


@dataclass(frozen=True)
class Grant:
    """Operations on one resource (``topic``, ``group`` or ``transactional_id``), named
    literally or by prefix."""

    resource: str
    name: str
    operations: tuple[str, ...]
    prefixed: bool = False


def username(settings: Settings, role: str) -> str:
    """The SCRAM user of a role: the role's name under the topic prefix."""
    return f"{settings.topic_prefix}{role}"


def grants(settings: Settings) -> dict[str, list[Grant]]:
    """Role -> the ACLs its principal gets."""
    t = settings.topics
    prefix = settings.topic_prefix
    dlq = t.dead_letter
    send_requests = [t.send_requests(c) for c in CHANNELS]
    dispatch = [t.dispatch(c) for c in CHANNELS]
    ledgers = [t.ledger(c) for c in CHANNELS]
    receipts = [t.receipts(c) for c in CHANNELS]
    outcomes = [t.sent, t.notsent, t.failed]

    def topics(names: list[str], *operations: str) -> list[Grant]:
        return [Grant("topic", name, operations) for name in names]

    readers = Grant("group", READER_GROUP_PREFIX, ("READ",), prefixed=True)
    operator = [
        *topics([t.control, t.status, t.canary], "READ", "WRITE"),
        # Guardrails: rules (`estop rules`, the API), feedback (POST /feedback), rule values.
        *topics([t.guardrail_rules], "READ", "WRITE"),
        *topics([t.audit, t.feedback], "WRITE"),
        *topics([t.acks, *outcomes, *ledgers, t.guardrail_state], "READ"),
        # Stop confirmation asks who holds which partition of the gate and dispatch topics.
        Grant("group", f"{prefix}estop-", ("DESCRIBE",), prefixed=True),
        readers,
    ]
    control_app = f"{prefix}estop-control"
    control = [
        *operator,
        # A relaunch from the console queues the unsent audience through the launcher: its
        # requests, and notSent for those a stop keeps it from queueing.
        *topics([*send_requests, t.notsent], "WRITE"),
        Grant("group", control_app, ("READ", "DESCRIBE")),
        # Faust's own topics: leader election, table changelogs, stop confirmations.
        Grant("topic", f"{control_app}-", ("CREATE", "READ", "WRITE", "DESCRIBE_CONFIGS"),
              prefixed=True),
    ]
    worker = [
        *topics([*send_requests, t.control], "READ"),
        *topics([*dispatch, *ledgers, *receipts], "READ", "WRITE"),
        *topics([*outcomes, t.acks], "WRITE"),
        *topics([dlq(name) for name in (*send_requests, *dispatch, *receipts)], "WRITE"),
        Grant("group", f"{prefix}estop-gate-", ("READ",), prefixed=True),
        Grant("group", f"{prefix}estop-dispatcher-", ("READ",), prefixed=True),
        Grant("transactional_id", f"{prefix}estop-gate-", ("WRITE", "DESCRIBE"), prefixed=True),
        Grant("transactional_id", f"{prefix}estop-dispatcher-", ("WRITE", "DESCRIBE"), prefixed=True),
        readers,
    ]
    sink_inputs = [*outcomes, t.status, t.control, t.acks, t.audit]
    analytics = [
        *topics(sink_inputs, "READ"),
        *topics([dlq(name) for name in sink_inputs], "WRITE"),
        Grant("group", t.sink_group, ("READ",)),
        readers,
    ]
    engine = [
        *topics(send_requests, "WRITE"),
        *topics([t.notsent], "WRITE"),
        *topics([t.status, t.canary], "READ", "WRITE"),
        *topics([t.control], "READ"),
        readers,
    ]
    mta = [*topics([t.receipts("email")], "WRITE")]
    guardrail = [
        *topics([t.sent, t.failed, t.feedback, t.guardrail_rules, t.acks], "READ"),
        *topics([t.guardrail_counts, t.guardrail_state], "READ", "WRITE"),
        *topics([t.control, t.status], "READ", "WRITE"),
        *topics([t.audit, dlq(t.feedback)], "WRITE"),
        Grant("group", f"{prefix}estop-guardrail", ("READ",), prefixed=True),
        Grant("transactional_id", f"{prefix}estop-guardrail", ("WRITE", "DESCRIBE"), prefixed=True),
        # Its stops wait for their confirmation, as `estop stop` does.
        Grant("group", f"{prefix}estop-", ("DESCRIBE",), prefixed=True),
        readers,
    ]
    return {"operator": operator, "control": control, "worker": worker, "analytics": analytics,
            "engine": engine, "mta": mta, "guardrail": guardrail}
