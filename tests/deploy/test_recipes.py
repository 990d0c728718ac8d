"""The deployment recipes in deploy/ checked with the tools that run here: Kubernetes manifests
against the API schemas (kubernetes-validate, strict), the operators' custom resources (Strimzi
Kafka, KafkaNodePool, KafkaTopic, KafkaUser; KEDA ScaledObject, TriggerAuthentication) against the
schemas of their CRDs (tests/deploy/schemas, copied from the operators' releases), the compose
file by the compose client (`docker-compose config`), its Prometheus configuration and rules by
promtool; and every command, setting, topic, consumer group, port, Kafka user and ACL the recipes
name against estop itself. Building the image and running the containers need a Docker engine
and a Kubernetes cluster, which these tests do not have."""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml

from streams.cli import main
from streams.kafka.topics import Replication, plan
from streams.models import CHANNELS
from streams.security import credentials
from streams.security.roles import ROLES, Grant, grants
from streams.settings import Settings, load_settings
from tests.support import REPO, run_estop

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
DOCKERFILE = DEPLOY / "container" / "Dockerfile"
SCHEMAS = Path(__file__).parent / "schemas"
KUBERNETES_VERSION = "1.33.0"
Doc = dict[str, Any]


# -- loading --------------------------------------------------------------------------------


@functools.cache
def manifests() -> list[Doc]:
    """Every resource `kubectl apply -k deploy/kubernetes` would apply, in kustomization order."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"]
            for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def of_kind(kind: str) -> list[Doc]:
    return [doc for doc in manifests() if doc["kind"] == kind]


def pod_settings(**values: object) -> Settings:
    """Settings as a container starts with them: the defaults and these values, not the
    ESTOP_ environment of the machine running the tests."""
    saved = {key: os.environ.pop(key) for key in list(os.environ) if key.startswith("ESTOP_")}
    try:
        return load_settings(**values)
    finally:
        os.environ.update(saved)


def config_settings() -> Settings:
    """The settings every pod gets from the ConfigMap."""
    (config,) = of_kind("ConfigMap")
    return pod_settings(**{key.removeprefix("ESTOP_").lower(): value
                           for key, value in config["data"].items()})


def container(deployment: Doc) -> Doc:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def deployments() -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in of_kind("Deployment")}


@functools.cache
def compose() -> Doc:
    loaded: Doc = yaml.safe_load(COMPOSE.read_text())
    return loaded


def dockerfile_entrypoint() -> list[str]:
    found = re.search(r"^ENTRYPOINT (\[.*\])$", DOCKERFILE.read_text(), re.MULTILINE)
    assert found is not None, "the Dockerfile has no exec-form ENTRYPOINT"
    entrypoint: list[str] = json.loads(found[1])
    return entrypoint


# -- Kubernetes -----------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(on_disk)


def test_core_manifests_pass_kubernetes_strict_schema_validation() -> None:
    """ConfigMap, Deployments, Service, PodDisruptionBudget against the Kubernetes API schemas;
    strict: a misspelt field is an error, not silently dropped."""
    core = [d for d in manifests() if "." not in d["apiVersion"].split("/")[0]]
    assert {d["kind"] for d in core} == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}
    for doc in core:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    broken = copy.deepcopy(deployments()["estop-gate-email"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def strict_schema(node: Any) -> Any:
    """A CRD's openAPIV3Schema as the API server applies it: unknown fields are refused (as
    `kubectl apply --validate=strict` does) unless the schema preserves them, int-or-string
    fields take either."""
    if isinstance(node, list):
        return [strict_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


CUSTOM = {"Kafka": "kafka.kafka.strimzi.io-v1.json",
          "KafkaNodePool": "kafkanodepool.kafka.strimzi.io-v1.json",
          "KafkaTopic": "kafkatopic.kafka.strimzi.io-v1.json",
          "KafkaUser": "kafkauser.kafka.strimzi.io-v1.json",
          "ScaledObject": "scaledobject.keda.sh-v1alpha1.json",
          "TriggerAuthentication": "triggerauthentication.keda.sh-v1alpha1.json"}

# Per kind, changes the operator refuses (path to a field, value), one at a time: a misspelt
# field, a wrong type, and the easy slips (Kafka's spellings where Strimzi wants its own).
BROKEN: dict[str, list[tuple[tuple[str | int, ...], object]]] = {
    "Kafka": [(("spec", "kafka", "authorisation"), {"type": "simple"}),
              (("spec", "kafka", "listeners", 0, "authentication", "type"), "SCRAM-SHA-512"),
              (("spec", "kafka", "listeners", 0, "tls"), "false")],
    "KafkaNodePool": [(("spec", "role"), ["broker"]), (("spec", "replicas"), "three"),
                      (("spec", "roles"), ["combined"])],
    "KafkaTopic": [(("spec", "partitons"), 3), (("spec", "partitions"), "three")],
    "KafkaUser": [(("spec", "authentication", "typ"), "scram-sha-512"),
                  (("spec", "authorization", "acls", 0, "operations"), ["WRITE"]),
                  (("spec", "authorization", "acls", 0, "resource", "patternType"), "prefixed"),
                  (("spec", "authorization", "acls", 0, "resource", "type"), "transactional_id")],
    "ScaledObject": [(("spec", "maxReplicas"), 3), (("spec", "minReplicaCount"), "three"),
                     (("spec", "triggers", 0, "authenticationRef", "kind"), "Secret")],
    "TriggerAuthentication": [(("spec", "env", 0, "parametr"), "username"),
                              (("spec", "secretTargetRef"), {"name": "estop-worker"})],
}


def changed(doc: Doc, path: tuple[str | int, ...], value: object) -> Doc:
    """A copy of the document with the field at ``path`` set to ``value``."""
    out = copy.deepcopy(doc)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


@pytest.mark.parametrize("kind", sorted(CUSTOM))
def test_custom_resources_pass_their_operators_crd_schema(kind: str) -> None:
    schema = json.loads((SCHEMAS / CUSTOM[kind]).read_text())
    crd = schema.pop("x-estop-crd")
    assert crd["kind"] == kind
    validator = jsonschema.Draft7Validator(strict_schema(schema))
    docs = of_kind(kind)
    assert docs
    for doc in docs:
        assert doc["apiVersion"] == f"{crd['group']}/{crd['version']}"
        errors = [e.message for e in validator.iter_errors(doc)]
        assert errors == [], f"{doc['metadata']['name']}: {errors}"
    # The validator refuses what the operator would.
    for path, value in BROKEN[kind]:
        assert list(validator.iter_errors(changed(docs[0], path, value))), (path, value)


def test_kafka_topics_are_the_topic_plan_with_three_replicas() -> None:
    """The KafkaTopic resources are exactly what `estop topics create` makes from the same
    settings on three brokers: names, partitions, replication 3, min.insync.replicas 2, config."""
    settings = config_settings()
    wanted = {s.name: (s.partitions, 3, s.config) for s in plan(settings, Replication(3, 2))}
    found = {}
    for doc in of_kind("KafkaTopic"):
        spec = doc["spec"]
        assert doc["metadata"]["labels"]["strimzi.io/cluster"] == "estop"
        found[spec["topicName"]] = (spec["partitions"], spec["replicas"],
                                    {k: str(v) for k, v in spec["config"].items()})
    assert found == wanted


def test_a_deployment_per_role_and_channel_probed_on_health() -> None:
    settings = config_settings()
    found = deployments()
    workers = [f"estop-{role}-{c}" for role in ("gate", "dispatcher") for c in CHANNELS] + [
        "estop-sink", "estop-guardrail"]
    assert sorted(found) == sorted([*workers, "estop-control"])
    for name in workers:
        spec = container(found[name])
        roles = spec["args"][spec["args"].index("--role") + 1]
        assert name.startswith(f"estop-{roles}")
        if roles not in ("sink", "guardrail"):
            assert spec["args"][spec["args"].index("--channel") + 1] == name.rsplit("-", 1)[1]
        (port,) = spec["ports"]
        assert port["containerPort"] == settings.metrics_port
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert spec[probe]["httpGet"] == {"path": "/health", "port": port["name"]}, (name, probe)
    control = container(found["estop-control"])
    (port,) = control["ports"]
    assert port["containerPort"] == settings.control_port
    # The API speaks HTTPS (ESTOP_CONTROL_TLS_CERT and _KEY, from the Secret estop-control-tls).
    assert control["readinessProbe"]["httpGet"] == {"path": "/health", "port": port["name"],
                                                     "scheme": "HTTPS"}
    assert control["livenessProbe"]["httpGet"]["path"] in ("/health", "/metrics")
    control_env = {e["name"]: e.get("value") for e in control["env"]}
    control_volumes = {v["name"]: v for v in found["estop-control"]["spec"]["template"]["spec"]["volumes"]}
    (tls,) = [m for m in control["volumeMounts"]
              if control_env["ESTOP_CONTROL_TLS_CERT"].startswith(m["mountPath"] + "/")]
    assert control_env["ESTOP_CONTROL_TLS_KEY"].startswith(tls["mountPath"] + "/")
    assert control_volumes[tls["name"]]["secret"]["secretName"] == "estop-control-tls"
    (service,) = of_kind("Service")
    control_labels = found["estop-control"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= control_labels.items()
    # The analytics store's DSN only where the store is used, from a Secret.
    for name, deployment in found.items():
        env = {e["name"]: e for e in container(deployment).get("env", [])}
        assert ("ESTOP_ANALYTICS_DSN" in env) == (name in ("estop-sink", "estop-control")), name
        if "ESTOP_ANALYTICS_DSN" in env:
            assert "secretKeyRef" in env["ESTOP_ANALYTICS_DSN"]["valueFrom"]


def test_the_disruption_budget_covers_the_data_plane() -> None:
    (budget,) = of_kind("PodDisruptionBudget")
    selector = budget["spec"]["selector"]["matchLabels"].items()
    covered = {name for name, d in deployments().items()
               if selector <= d["spec"]["template"]["metadata"]["labels"].items()}
    assert covered == {n for n in deployments() if n != "estop-control"}
    assert budget["spec"]["maxUnavailable"] == 1


def test_keda_scales_each_stage_on_the_lag_of_its_own_group_and_topic() -> None:
    settings = config_settings()
    topics = settings.topics
    expected = {
        **{f"estop-gate-{c}": (topics.gate_group(c), topics.send_requests(c)) for c in CHANNELS},
        **{f"estop-dispatcher-{c}": (topics.dispatcher_group(c), topics.dispatch(c)) for c in CHANNELS},
        "estop-sink": (topics.sink_group, None),
    }
    found = {}
    for scaled in of_kind("ScaledObject"):
        spec = scaled["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments()
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= settings.partitions
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["bootstrapServers"] == settings.bootstrap_servers
        found[spec["scaleTargetRef"]["name"]] = (meta["consumerGroup"], meta.get("topic"))
    assert found == expected


# -- Kafka security --------------------------------------------------------------------------

# The Kafka user each Deployment's pods authenticate as, by the role label of the Deployment.
POD_USERS = {"gate": "estop-worker", "dispatcher": "estop-worker", "sink": "estop-analytics",
             "control": "estop-control", "guardrail": "estop-guardrail"}
# Secrets the user creates (docs/deployment.md says how) and the keys the recipe reads; every other
# Secret the recipe reads is a KafkaUser's, made by Strimzi's User Operator.
USER_SECRETS = {"estop-analytics-store": {"dsn"}, "estop-http-tokens": {"tokens"}}
# KEDA's Kafka scaler spells the SASL mechanisms its own way.
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
STRIMZI_RESOURCE = {"topic": "topic", "group": "group", "transactional_id": "transactionalId"}
# Kafka's implied operations: Describe comes with Read, Write, Delete and Alter; DescribeConfigs
# with AlterConfigs; All is everything.
IMPLIED_BY = {"Describe": {"Read", "Write", "Delete", "Alter"}, "DescribeConfigs": {"AlterConfigs"}}


def kafka_users() -> dict[str, Doc]:
    return {u["metadata"]["name"]: u for u in of_kind("KafkaUser")}


def strimzi_acl(grant: Grant) -> Doc:
    """An estop grant as a Strimzi ACL rule: resource types and operations in Strimzi's spelling
    (transactionalId, DescribeConfigs), prefixed names as patternType prefix."""
    return {"resource": {"type": STRIMZI_RESOURCE[grant.resource], "name": grant.name,
                         "patternType": "prefix" if grant.prefixed else "literal"},
            "operations": [op.title().replace("_", "") for op in grant.operations]}


def allows(user: Doc, resource: str, name: str, operation: str) -> bool:
    """Whether Kafka's authorizer lets this KafkaUser do ``operation`` on a resource, from its
    ACLs alone: a matching deny wins, else a matching allow of the operation or one implying it."""
    wanted = {operation, "All", *IMPLIED_BY.get(operation, ())}
    verdicts = set()
    for acl in user["spec"]["authorization"]["acls"]:
        res = acl["resource"]
        pattern = res.get("patternType", "literal")
        named = (name.startswith(res["name"]) if pattern == "prefix"
                 else res["name"] in (name, "*"))
        if res["type"] == resource and named and wanted & set(acl["operations"]):
            verdicts.add(acl.get("type", "allow"))
    return verdicts == {"allow"}


def env_of(deployment: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container(deployment).get("env", [])}


def pod_user(deployment: Doc) -> str:
    user: str = env_of(deployment)["ESTOP_SASL_USERNAME"]["value"]
    return user


def kafka_name() -> str:
    (kafka,) = of_kind("Kafka")
    name: str = kafka["metadata"]["name"]
    return name


def test_the_kafka_cluster_lets_in_only_authenticated_users_and_denies_what_no_acl_allows() -> None:
    """The Strimzi cluster the ConfigMap points at: every listener asks SCRAM-SHA-512 (no
    anonymous door), the simple authorizer with no super user of ours and no allow-everyone, the
    User and Topic Operators running, three combined nodes, the topic defaults of three brokers."""
    settings = config_settings()
    (kafka,) = of_kind("Kafka")
    name = kafka["metadata"]["name"]
    spec = kafka["spec"]["kafka"]
    for listener in spec["listeners"]:
        assert listener["authentication"] == {"type": "scram-sha-512"}, listener["name"]
    assert spec["authorization"] == {"type": "simple"}
    assert str(spec["config"].get("allow.everyone.if.no.acl.found", "false")).lower() == "false"
    by_address = {f"{name}-kafka-bootstrap:{listener['port']}": listener
                  for listener in spec["listeners"]}
    listener = by_address[settings.bootstrap_servers]
    # The ConfigMap speaks the listener's protocol, the one the secured suite proves on a broker.
    assert settings.security_protocol == ("SASL_SSL" if listener["tls"] else "SASL_PLAINTEXT")
    assert (settings.security_protocol, settings.sasl_mechanism) == (credentials.PROTOCOL,
                                                                     credentials.MECHANISM)
    assert {"topicOperator", "userOperator"} <= set(kafka["spec"]["entityOperator"])
    (pool,) = of_kind("KafkaNodePool")
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == name
    assert pool["spec"]["replicas"] >= 3 and set(pool["spec"]["roles"]) == {"controller", "broker"}
    assert spec["config"]["default.replication.factor"] == settings.replication_factor
    assert spec["config"]["min.insync.replicas"] == settings.min_insync_replicas
    for doc in of_kind("KafkaTopic") + of_kind("KafkaUser"):
        assert doc["metadata"]["labels"]["strimzi.io/cluster"] == name, doc["metadata"]["name"]


def test_kafka_users_are_the_roles_with_exactly_their_grants() -> None:
    """One SCRAM user per role, estop-<role>, whose ACLs are exactly what `estop security init`
    grants that role (streams/security/roles.py) under the ConfigMap's settings: a change to the
    roles that the recipe does not follow fails here."""
    wanted = {f"estop-{role}": [strimzi_acl(g) for g in role_grants]
              for role, role_grants in grants(config_settings()).items()}
    assert sorted(wanted) == sorted(f"estop-{role}" for role in ROLES)
    users = kafka_users()
    assert sorted(users) == sorted(wanted)
    for name, user in users.items():
        assert user["spec"]["authentication"] == {"type": "scram-sha-512"}, name
        assert user["spec"]["authorization"]["type"] == "simple", name
        assert user["spec"]["authorization"]["acls"] == wanted[name], name


@pytest.mark.parametrize("topic", ["control", "audit"])
def test_only_the_operator_and_the_control_plane_may_write_the_stop_topics(topic: str) -> None:
    """Read from the recipe as the broker would: whoever may write campaign-control can stop every
    campaign, whoever may write audit can forge the trail: the operator, the control plane and
    the guardrail processor (which stops campaigns as a person does). Of the pods, only the
    control plane and the guardrail processor."""
    name = getattr(config_settings().topics, topic)
    (kafka,) = of_kind("Kafka")
    assert not kafka["spec"]["kafka"]["authorization"].get("superUsers")
    users = kafka_users()
    writers = {u for u, user in users.items() if allows(user, "topic", name, "Write")}
    assert writers == {"estop-operator", "estop-control", "estop-guardrail"}
    pods_writing = {d for d, deployment in deployments().items()
                    if pod_user(deployment) in writers}
    assert pods_writing == {"estop-control", "estop-guardrail"}
    # The check itself can say yes and no: the workers read the topic they may not write.
    assert allows(users["estop-worker"], "topic", name, "Read") == (topic == "control")


def test_every_pod_authenticates_as_its_roles_user_with_the_password_from_its_secret() -> None:
    """Gates and dispatchers as estop-worker, the sink as estop-analytics, the control plane as
    estop-control; the password from the Secret Strimzi made for that user; the settings the pod
    starts with connect to Kafka as that user over SCRAM."""
    config = of_kind("ConfigMap")[0]["data"]
    users = kafka_users()
    for name, deployment in deployments().items():
        user = POD_USERS[deployment["metadata"]["labels"]["estop.io/role"]]
        assert user in users
        env = env_of(deployment)
        assert env["ESTOP_SASL_USERNAME"] == {"name": "ESTOP_SASL_USERNAME", "value": user}, name
        assert env["ESTOP_SASL_PASSWORD"]["valueFrom"] == {
            "secretKeyRef": {"name": user, "key": "password"}}, name
        settings = pod_settings(**{k.removeprefix("ESTOP_").lower(): v for k, v in config.items()},
                                sasl_username=user, sasl_password="from-the-secret")
        client = settings.client_config()
        assert {k: client[k] for k in ("security.protocol", "sasl.mechanism", "sasl.username",
                                       "ssl.ca.location")} == {
            "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": user, "ssl.ca.location": "/etc/estop/kafka-ca/ca.crt"}, name
        # The CA it trusts is the cluster's, mounted from Strimzi's Secret where the setting says.
        spec = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        (mount,) = [m for m in container(deployment)["volumeMounts"]
                    if m["mountPath"] == "/etc/estop/kafka-ca"]
        assert volumes[mount["name"]]["secret"]["secretName"] == f"{kafka_name()}-cluster-ca-cert", name


def test_no_password_in_plain_text() -> None:
    """Every secret a pod or a scaler uses comes from a Secret: a KafkaUser's (Strimzi generates the
    password) or one of the few the user creates, whose names no KafkaUser takes (Strimzi would
    overwrite it). No Secret, password or token is written in the recipe itself."""
    assert of_kind("Secret") == []
    secret_like = re.compile(r"PASSWORD|TOKEN|SECRET|DSN|CREDENTIAL|PRIVATE_KEY")
    for config in of_kind("ConfigMap"):
        assert not [k for k in config["data"] if secret_like.search(k.upper())]
    users = kafka_users()
    assert not set(USER_SECRETS) & set(users)
    read = set()
    for name, deployment in deployments().items():
        for var, entry in env_of(deployment).items():
            if secret_like.search(var):
                assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], (name, var)
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                read.add((ref["name"], ref["key"]))
    for secret, key in read:
        assert key in USER_SECRETS.get(secret, set()) or (secret in users and key == "password")
    # estop-operator, estop-engine and estop-mta are for people, the campaign engine and the MTA
    # agent beside the organisation's MTA, not pods here.
    assert {secret for secret, _ in read} == set(USER_SECRETS) | (
        set(users) - {"estop-operator", "estop-engine", "estop-mta"})
    for user in users.values():  # no password of our own choosing: the User Operator makes one
        assert "password" not in user["spec"]["authentication"]
    (auth,) = of_kind("TriggerAuthentication")
    assert set(auth["spec"]) == {"env", "secretTargetRef"}
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "ca", "name": f"{kafka_name()}-cluster-ca-cert", "key": "ca.crt"}]
    # The Secrets the user creates are the ones the docs tell them to create.
    docs = (REPO / "docs" / "deployment.md").read_text()
    for secret, keys in USER_SECRETS.items():
        (key,) = keys
        assert f"kubectl create secret generic {secret} --from-literal={key}=" in docs


def test_every_scaler_authenticates_as_the_user_of_the_deployment_it_scales() -> None:
    """Each ScaledObject trigger references the TriggerAuthentication, which takes the username and
    password from the scaled container's own environment; that user may describe the group and
    topic the trigger measures, which is all the scaler asks the broker."""
    settings = config_settings()
    (auth,) = of_kind("TriggerAuthentication")
    found = {e["parameter"]: (e["name"], e["containerName"]) for e in auth["spec"]["env"]}
    (estop,) = {container(d)["name"] for d in deployments().values()}
    assert found == {"username": ("ESTOP_SASL_USERNAME", estop),
                     "password": ("ESTOP_SASL_PASSWORD", estop)}
    users = kafka_users()
    assert settings.sasl_mechanism is not None
    scaled_objects = of_kind("ScaledObject")
    assert scaled_objects
    for scaled in scaled_objects:
        target = deployments()[scaled["spec"]["scaleTargetRef"]["name"]]
        user = users[pod_user(target)]
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
            meta = trigger["metadata"]
            assert meta["sasl"] == KEDA_SASL[settings.sasl_mechanism]
            assert meta["tls"] == "enable"  # SASL_SSL, as the pods
            assert allows(user, "group", meta["consumerGroup"], "Describe")
            # Without a topic the scaler follows every topic the group commits: the sink's events.
            topics = [meta["topic"]] if "topic" in meta else [
                settings.topics.sent, settings.topics.notsent, settings.topics.failed]
            for topic in topics:
                assert allows(user, "topic", topic, "Describe"), (pod_user(target), topic)


# -- commands and settings -------------------------------------------------------------------


def estop_commands() -> list[tuple[str, list[str]]]:
    """(where, arguments after `estop`) for every estop command the recipes run."""
    entrypoint = dockerfile_entrypoint()
    assert entrypoint == ["estop"]
    found = [("Dockerfile CMD", json.loads(re.search(r"^CMD (\[.*\])$", DOCKERFILE.read_text(),
                                                      re.MULTILINE)[1]))]  # type: ignore[index]
    for name, deployment in deployments().items():
        spec = container(deployment)
        assert "command" not in spec, f"{name} must run the image's entrypoint, estop"
        found.append((f"kubernetes {name}", spec["args"]))
    for name, service in compose()["services"].items():
        if service.get("image") != "estop:latest":
            continue
        prefix = service.get("entrypoint", entrypoint)
        assert prefix[0] == "estop", name
        found.append((f"compose {name}", [*prefix[1:], *service["command"]]))
    return found


def parses(args: list[str]) -> None:
    """Parse ``estop ARGS`` with estop's own command line, without running it: unknown commands,
    options and choices fail here exactly as they would in the container."""
    command: click.Command = main
    ctx = main.make_context("estop", [], resilient_parsing=True)
    rest = list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        _name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None
        command = sub
    try:
        command.make_context(command.name or "", rest, parent=ctx)
    except click.exceptions.Exit as done:  # --help
        assert done.exit_code == 0


def test_every_command_the_recipes_run_exists_in_estop() -> None:
    listed = run_estop("--help")
    assert listed.returncode == 0, listed.stderr
    commands = estop_commands()
    assert len(commands) >= 12
    for where, args in commands:
        name = next((a for a in args if not a.startswith("-")), None)
        if name is not None:  # the image's default command is `estop --help`
            assert re.search(rf"^  {name}\s", listed.stdout, re.MULTILINE), (where, name)
        parses(args)
    roles = {args[args.index("--role") + 1] for _, args in commands if "--role" in args}
    assert roles == {"gate", "dispatcher", "sink", "guardrail"}
    with pytest.raises(click.UsageError):
        parses(["worker", "--role", "gatekeeper"])


def recipe_settings() -> dict[str, str]:
    """Every ESTOP_* variable the recipes set, and where."""
    found = {key: "ConfigMap" for key in of_kind("ConfigMap")[0]["data"]}
    for name, deployment in deployments().items():
        found.update({e["name"]: name for e in container(deployment).get("env", [])})
    for name, service in compose()["services"].items():
        found.update({k: f"compose {name}" for k in service.get("environment") or {}
                      if k.startswith("ESTOP_")})
    found.update({k: "Dockerfile" for k in re.findall(r"\b(ESTOP_[A-Z_]+)=", DOCKERFILE.read_text())})
    return found


def test_every_setting_the_recipes_set_is_an_estop_setting() -> None:
    known = {f"ESTOP_{name.upper()}" for name in Settings.model_fields}
    found = recipe_settings()
    assert len(found) >= 8
    unknown = {k: where for k, where in found.items() if k not in known}
    assert unknown == {}


# -- compose, Prometheus, the image -----------------------------------------------------------


def compose_client() -> list[str]:
    """The compose client: the Docker CLI's plugin when it has one, else docker-compose."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 check=False).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone is None:
        pytest.fail("no compose client: install Debian's docker-compose (deploy/system-packages.sh "
                    "test does) or the Docker CLI's compose plugin")
    return [standalone]


def test_compose_file_is_valid_for_the_compose_client() -> None:
    """`docker-compose config` resolves the file (anchors, merges, depends_on conditions) without
    an engine; the resolved services are the cluster, the split workers and the monitoring."""
    result = subprocess.run([*compose_client(), "-f", str(COMPOSE), "config"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    assert {"kafka-1", "kafka-2", "kafka-3", "topics", "gate", "dispatcher", "sink", "control",
            "prometheus", "grafana", "postgres"} <= set(resolved)
    kafka = [resolved[f"kafka-{n}"]["environment"] for n in (1, 2, 3)]
    assert [env["KAFKA_NODE_ID"] for env in kafka] == ["1", "2", "3"]
    assert len({env["CLUSTER_ID"] for env in kafka}) == 1
    for n, env in enumerate(kafka, 1):
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://kafka-{n}:9092"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
    for role in ("gate", "dispatcher", "sink"):
        assert resolved[role]["command"] == ["worker", "--role", role]
        env = resolved[role]["environment"]
        assert env["ESTOP_BOOTSTRAP_SERVERS"] == "kafka-1:9092,kafka-2:9092,kafka-3:9092"
        assert resolved[role]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        probe = resolved[role]["healthcheck"]["test"]
        assert f"http://localhost:{env['ESTOP_METRICS_PORT']}/health" in probe[-1], role
    broken = COMPOSE.read_text().replace("condition: service_completed_successfully",
                                         "condition: service_finished", 1)
    bad = subprocess.run([*compose_client(), "-f", "-", "config", "-q"], input=broken,
                         capture_output=True, text=True, check=False, cwd=COMPOSE.parent)
    assert bad.returncode != 0


def test_compose_prometheus_config_and_rules_pass_promtool(tmp_path: Path) -> None:
    """promtool checks the compose Prometheus config with the rules it mounts next to it; the
    scrape jobs name the compose services on their metrics ports."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install Debian's prometheus package "
                    "(deploy/system-packages.sh test)")
    config = tmp_path / "prometheus.yml"
    shutil.copy(DEPLOY / "compose" / "prometheus.yml", config)
    (tmp_path / "rules").symlink_to(DEPLOY / "prometheus" / "rules")
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = len(list((DEPLOY / "prometheus" / "rules").glob("*.yml")))
    assert f"SUCCESS: {rules} rule files found" in result.stdout + result.stderr
    services = compose()["services"]
    scraped = yaml.safe_load(config.read_text())["scrape_configs"]
    metrics_port = int(compose()["x-estop"]["environment"]["ESTOP_METRICS_PORT"])
    for job in scraped:
        for sd in job.get("dns_sd_configs", []):
            assert set(sd["names"]) <= set(services) and sd["port"] == metrics_port, job
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.split(":")
                assert host in services and int(port) == pod_settings().control_port, job
    jobs = {j["job_name"].removeprefix("estop-") for j in scraped}
    assert jobs == {"gate", "dispatcher", "guardrail", "sink", "control"}


def test_the_image_installs_estop_as_a_package_and_runs_it_as_a_non_root_user() -> None:
    """What can be checked without building (no Docker engine here): the image installs the
    package (not editable: what it reads at run time ships inside it) and drops the source copy,
    runs estop as its entrypoint, as a non-root user, and exposes the worker and control ports."""
    text = DOCKERFILE.read_text()
    copied = set(re.findall(r"^COPY (\S+)", text, re.MULTILINE)) | {
        p for line in re.findall(r"^COPY (.+) \./$", text, re.MULTILINE) for p in line.split()}
    assert {"pyproject.toml", "streams"} <= copied
    assert re.search(r"pip install /opt/estop", text)
    assert re.search(r"pip install -e", text) is None
    assert re.search(r"rm -rf /opt/estop", text)
    assert re.search(r"^USER (\d+)$", text, re.MULTILINE)
    assert re.search(r"^USER 0$", text, re.MULTILINE) is None
    exposed = {int(p) for p in re.findall(r"^EXPOSE (.+)$", text, re.MULTILINE)[0].split()}
    defaults = pod_settings()
    assert exposed == {defaults.metrics_port, defaults.control_port}
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    for needed in ("pyproject.toml", "README.md", "streams/"):
        assert f"!{needed}" in ignore
