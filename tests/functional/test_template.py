"""Security and packaging properties of the SAM template (no AWS, no SAM CLI needed).

The template is loaded with cfn-lint's own YAML decoder, so short-form intrinsics
(``!Ref``, ``!Sub``, ``!GetAtt``, ``!If``) arrive in their long form (``{"Ref": ...}``).
The AWS serverless rules for cfn-lint (``cfn-lint-serverless``, pinned in
requirements-tools.txt) run too when they are importable, as in the tools venv.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint
from cfnlint.decode import decode

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"

FUNCTIONS = {
    "BuildFunction": "functions/build",
    "QueryFunction": "functions/query",
    "WriteFunction": "functions/write",
    "DistributedBuildFunction": "functions/distbuild",
}
READ_ONLY_S3_ACTIONS = {"s3:GetObject", "s3:ListBucket"}
BUILD_S3_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:ListBucket"}
WRITE_S3_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"}
INDEX_OBJECTS = {"Fn::Sub": "${IndexBucket.Arn}/${IndexPrefix}*"}
INDEX_BUCKET_ARN = {"Fn::GetAtt": ["IndexBucket", "Arn"]}
#: Words that mark an IAM action as one that changes something (s3:PutObject, s3:DeleteObject,
#: s3:PutBucketPolicy, s3:RestoreObject, iam:CreateRole, ...); read actions carry none of them.
MUTATING_ACTION_WORDS = ("Put", "Delete", "Create", "Update", "Write", "Restore", "Replicate", "Abort", "*")
#: Lint rules a resource may switch off, each with the reason given in template.yaml.
#: WS1004: log group via LoggingConfig.LogGroup (serverless-rules#190); ES1001: an SQS event source
#: mapping takes no DestinationConfig.OnFailure (failed messages go to the queue's RedrivePolicy).
DOCUMENTED_SUPPRESSIONS = {"WS1004", "ES1001"}
#: The write function's statements that are not about the index: the write queue and its payloads.
WRITE_QUEUE_SIDS = ("PayloadObjectsRead", "WriteQueueConsume", "DeadLetterSend")
SERVERLESS_RULES = "cfn_lint_serverless.rules"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    tpl, matches = decode(str(TEMPLATE))
    assert not matches, [str(m) for m in matches]
    return tpl


def resources_of_type(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_}


def resolve(template: dict[str, Any], value: Any) -> Any:
    """Resolve a ``Ref`` to a parameter into its default; pass anything else through."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        param = template.get("Parameters", {}).get(value["Ref"])
        if param is not None:
            return param.get("Default")
    return value


def effective(template: dict[str, Any], function: str, prop: str) -> Any:
    """A function property, falling back to ``Globals.Function`` as SAM does."""
    props = template["Resources"][function]["Properties"]
    if prop in props:
        return props[prop]
    return template.get("Globals", {}).get("Function", {}).get(prop)


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def inline_statements(template: dict[str, Any], function: str) -> list[dict[str, Any]]:
    """Every statement of the function's ``Policies``; only inline documents are allowed."""
    policies = as_list(template["Resources"][function]["Properties"].get("Policies", []))
    statements = []
    for policy in policies:
        assert isinstance(policy, dict), f"{function}: policy {policy!r} is not a statement list"
        assert "Statement" in policy, (
            f"{function}: policy {policy!r} is not an inline statement list "
            "(managed policies and SAM templates would escape the bucket scoping checks)"
        )
        statements.extend(as_list(policy["Statement"]))
    return statements


def refers_to_index_bucket(resource: Any) -> bool:
    """True for ``!GetAtt IndexBucket.Arn`` or a ``!Sub`` built on ``${IndexBucket.Arn}``."""
    if isinstance(resource, dict) and "Fn::GetAtt" in resource:
        return list(resource["Fn::GetAtt"]) == ["IndexBucket", "Arn"]
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        return str(resource["Fn::Sub"]).startswith("${IndexBucket.Arn}")
    return False


# ---------------------------------------------------------------- lint


def test_template_passes_cfn_lint_without_errors_or_warnings() -> None:
    matches = lint(TEMPLATE.read_text(), config=ManualArgs(regions=["us-east-1"]))
    problems = [m for m in matches if m.rule.id[0] in "EW"]
    assert not problems, "\n".join(str(m) for m in problems)


@pytest.mark.skipif(
    importlib.util.find_spec("cfn_lint_serverless") is None,
    reason="cfn-lint-serverless is installed in the tools venv (make tools-venv), not the dev venv",
)
def test_template_passes_the_serverless_rules() -> None:
    config = ManualArgs(regions=["us-east-1"], append_rules=[SERVERLESS_RULES])  # type: ignore[typeddict-unknown-key]
    matches = lint(TEMPLATE.read_text(), config=config)
    problems = [m for m in matches if m.rule.id[0] in "EW" or m.rule.id[:2] in ("ES", "WS")]
    assert not problems, "\n".join(str(m) for m in problems)


def test_lint_suppressions_are_only_the_documented_ones(template: dict[str, Any]) -> None:
    for name, resource in template["Resources"].items():
        config = resource.get("Metadata", {}).get("cfn-lint", {}).get("config", {})
        assert set(config) <= {"ignore_checks"}, f"{name}: unexpected cfn-lint config {config}"
        ignored = set(config.get("ignore_checks", []))
        assert ignored <= DOCUMENTED_SUPPRESSIONS, f"{name}: undocumented suppression {ignored}"
    assert "cfn-lint" not in template.get("Metadata", {}), "suppress per resource, not template-wide"


# ---------------------------------------------------------------- index bucket


def test_index_bucket_is_encrypted_at_rest(template: dict[str, Any]) -> None:
    bucket = template["Resources"]["IndexBucket"]["Properties"]
    rules = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    algorithms = {r["ServerSideEncryptionByDefault"]["SSEAlgorithm"] for r in rules}
    assert algorithms
    assert algorithms <= {"AES256", "aws:kms", "aws:kms:dsse"}


def test_index_bucket_blocks_all_public_access(template: dict[str, Any]) -> None:
    block = template["Resources"]["IndexBucket"]["Properties"]["PublicAccessBlockConfiguration"]
    for flag in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"):
        assert block.get(flag) is True, f"PublicAccessBlockConfiguration.{flag} must be true"


def test_index_bucket_disables_acls(template: dict[str, Any]) -> None:
    rules = template["Resources"]["IndexBucket"]["Properties"]["OwnershipControls"]["Rules"]
    assert [r["ObjectOwnership"] for r in rules] == ["BucketOwnerEnforced"]


def test_index_bucket_policy_denies_requests_without_tls(template: dict[str, Any]) -> None:
    policies = [
        p["Properties"]
        for p in resources_of_type(template, "AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": "IndexBucket"}
    ]
    assert len(policies) == 1, "exactly one bucket policy on IndexBucket"
    denies = [
        s
        for s in as_list(policies[0]["PolicyDocument"]["Statement"])
        if s["Effect"] == "Deny"
        and str(s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport")).lower() == "false"
    ]
    assert denies, "no Deny statement conditioned on aws:SecureTransport = false"
    deny = denies[0]
    assert deny["Principal"] in ("*", {"AWS": "*"})
    assert "s3:*" in as_list(deny["Action"])
    resources = as_list(deny["Resource"])
    assert {"Fn::GetAtt": ["IndexBucket", "Arn"]} in resources, "must cover the bucket itself"
    assert {"Fn::Sub": "${IndexBucket.Arn}/*"} in resources, "must cover every object"


# ---------------------------------------------------------------- IAM


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_function_policies_are_scoped_to_named_buckets(template: dict[str, Any], function: str) -> None:
    for statement in inline_statements(template, function):
        assert statement["Effect"] == "Allow"
        for action in as_list(statement["Action"]):
            assert "*" not in action, f"{function}: wildcard action {action}"
        for resource in as_list(statement["Resource"]):
            assert resource != "*", f"{function}: statement {statement.get('Sid')} on Resource *"


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_function_permissions_come_only_from_its_inline_policies(
    template: dict[str, Any], function: str
) -> None:
    """No explicit Role, managed policy or permissions boundary that the checks here would miss."""
    props = template["Resources"][function]["Properties"]
    for escape in ("Role", "PermissionsBoundary"):
        assert escape not in props, f"{function}: {escape} bypasses the Policies checked here"
        assert escape not in template["Globals"]["Function"], f"Globals: {escape}"
    iam = {k: v["Type"] for k, v in template["Resources"].items() if v["Type"].startswith("AWS::IAM::")}
    assert not iam, f"IAM resources outside the functions' Policies: {iam}"
    inline_statements(template, function)  # asserts every policy is an inline statement list


def test_index_bucket_policy_grants_nothing(template: dict[str, Any]) -> None:
    """The bucket policy only denies, so the functions' roles are the only grants."""
    for policy in resources_of_type(template, "AWS::S3::BucketPolicy").values():
        for statement in as_list(policy["Properties"]["PolicyDocument"]["Statement"]):
            assert statement["Effect"] == "Deny", statement.get("Sid")


def test_query_function_has_no_write_action_anywhere(template: dict[str, Any]) -> None:
    actions = {a for s in inline_statements(template, "QueryFunction") for a in as_list(s["Action"])}
    writes = {a for a in actions if any(word in a for word in MUTATING_ACTION_WORDS)}
    assert not writes, f"QueryFunction may not change anything: {writes}"
    assert actions, "QueryFunction needs at least s3:GetObject"


def test_query_function_policy_is_read_only_on_the_index_bucket(template: dict[str, Any]) -> None:
    statements = inline_statements(template, "QueryFunction")
    actions = {a for s in statements for a in as_list(s["Action"])}
    assert actions <= READ_ONLY_S3_ACTIONS, f"non-read actions: {actions - READ_ONLY_S3_ACTIONS}"
    for statement in statements:
        for resource in as_list(statement["Resource"]):
            assert refers_to_index_bucket(resource), (
                f"QueryFunction may only read IndexBucket, got {resource}"
            )


def test_query_function_reads_objects_only_under_the_index_prefix(template: dict[str, Any]) -> None:
    statements = inline_statements(template, "QueryFunction")
    object_resources = [
        r for s in statements if "s3:GetObject" in as_list(s["Action"]) for r in as_list(s["Resource"])
    ]
    assert object_resources == [{"Fn::Sub": "${IndexBucket.Arn}/${IndexPrefix}*"}]


def test_build_function_writes_only_under_the_index_prefix(template: dict[str, Any]) -> None:
    statements = inline_statements(template, "BuildFunction")
    actions = {a for s in statements for a in as_list(s["Action"])}
    assert actions <= BUILD_S3_ACTIONS, f"unexpected actions: {actions - BUILD_S3_ACTIONS}"
    write_resources = [
        r for s in statements if "s3:PutObject" in as_list(s["Action"]) for r in as_list(s["Resource"])
    ]
    assert write_resources == [{"Fn::Sub": "${IndexBucket.Arn}/${IndexPrefix}*"}]


def test_write_function_may_only_read_write_delete_and_list_the_index(template: dict[str, Any]) -> None:
    statements = [
        s for s in inline_statements(template, "WriteFunction") if s.get("Sid") not in WRITE_QUEUE_SIDS
    ]
    actions = {a for s in statements for a in as_list(s["Action"])}
    assert actions == WRITE_S3_ACTIONS, f"expected exactly {WRITE_S3_ACTIONS}, got {actions}"
    for statement in statements:
        assert statement["Effect"] == "Allow"
        assert "NotAction" not in statement
        assert "NotResource" not in statement
        for action in as_list(statement["Action"]):
            expected = INDEX_BUCKET_ARN if action == "s3:ListBucket" else INDEX_OBJECTS
            assert as_list(statement["Resource"]) == [expected], (
                f"WriteFunction: {action} on {statement['Resource']}, expected {expected}"
            )


def test_write_function_uses_only_its_own_queues_and_reads_payloads_where_sources_live(
    template: dict[str, Any],
) -> None:
    statements = inline_statements(template, "WriteFunction")
    by_sid = {s["Sid"]: s for s in statements if s.get("Sid") in WRITE_QUEUE_SIDS}
    assert set(by_sid) == set(WRITE_QUEUE_SIDS)
    consume = by_sid["WriteQueueConsume"]
    assert set(as_list(consume["Action"])) == {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
    }
    assert as_list(consume["Resource"]) == [{"Fn::GetAtt": ["WriteQueue", "Arn"]}]
    assert as_list(by_sid["DeadLetterSend"]["Action"]) == ["sqs:SendMessage"]
    assert as_list(by_sid["DeadLetterSend"]["Resource"]) == [{"Fn::GetAtt": ["WriteDeadLetterQueue", "Arn"]}]
    assert as_list(by_sid["PayloadObjectsRead"]["Action"]) == ["s3:GetObject"]
    source = next(
        s for s in inline_statements(template, "BuildFunction") if s.get("Sid") == "SourceObjectsRead"
    )
    assert by_sid["PayloadObjectsRead"]["Resource"] == source["Resource"]


def test_write_function_deletes_only_under_the_index_prefix(template: dict[str, Any]) -> None:
    deletable = [
        r
        for function in FUNCTIONS
        for s in inline_statements(template, function)
        if "s3:DeleteObject" in as_list(s["Action"])
        for r in as_list(s["Resource"])
    ]
    assert deletable == [INDEX_OBJECTS], "only WriteFunction (garbage collection) deletes, under the prefix"


# ---------------------------------------------------------------- functions


def test_write_function_is_sized_like_the_build(template: dict[str, Any]) -> None:
    """A compaction rebuilds the whole collection, as a build does."""
    assert resolve(template, effective(template, "WriteFunction", "MemorySize")) == 3008
    assert resolve(template, effective(template, "WriteFunction", "Timeout")) == 900


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_function_traces_actively_and_logs_json(template: dict[str, Any], function: str) -> None:
    assert effective(template, function, "Tracing") == "Active"
    logging = dict(template["Globals"]["Function"].get("LoggingConfig", {}))  # SAM merges maps
    logging.update(template["Resources"][function]["Properties"].get("LoggingConfig", {}))
    assert logging["LogFormat"] == "JSON"
    assert logging["SystemLogLevel"] == "INFO", "REPORT lines (duration, memory) must be kept"
    assert logging["ApplicationLogLevel"] == {
        "Fn::FindInMap": ["LambdaLogLevel", {"Ref": "LogLevel"}, "Name"]
    }


def test_lambda_log_level_follows_the_powertools_log_level(template: dict[str, Any]) -> None:
    """Powertools lets Lambda's ApplicationLogLevel win, so both must come from LogLevel."""
    allowed = template["Parameters"]["LogLevel"]["AllowedValues"]
    mapping = template["Mappings"]["LambdaLogLevel"]
    assert set(mapping) == set(allowed)
    lambda_names = {"TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"}
    for level in allowed:
        name = mapping[level]["Name"]
        assert name in lambda_names, f"{level} -> {name} is not a Lambda log level"
        assert name[:4] == level[:4]


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_function_has_explicit_memory_and_timeout(template: dict[str, Any], function: str) -> None:
    memory = resolve(template, effective(template, function, "MemorySize"))
    timeout = resolve(template, effective(template, function, "Timeout"))
    assert isinstance(memory, int), memory
    assert 128 <= memory <= 10240, memory
    assert isinstance(timeout, int), timeout
    assert 1 <= timeout <= 900, timeout


def test_query_function_answers_within_thirty_seconds(template: dict[str, Any]) -> None:
    assert resolve(template, effective(template, "QueryFunction", "Timeout")) <= 30


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_function_logs_to_a_log_group_with_retention(template: dict[str, Any], function: str) -> None:
    logging = template["Resources"][function]["Properties"]["LoggingConfig"]
    ref = logging["LogGroup"]
    assert set(ref) == {"Ref"}, "LoggingConfig.LogGroup must !Ref a log group of this stack"
    group = template["Resources"][ref["Ref"]]
    assert group["Type"] == "AWS::Logs::LogGroup"
    retention = resolve(template, group["Properties"].get("RetentionInDays"))
    assert isinstance(retention, int), "log group must expire its events"
    assert retention > 0, "log group must expire its events"


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_function_runtime_and_environment(template: dict[str, Any], function: str) -> None:
    assert effective(template, function, "Runtime") == "python3.13"
    assert list(effective(template, function, "Architectures")) == ["x86_64"]
    assert effective(template, function, "Handler") == "app.lambda_handler"
    variables = dict(template["Globals"]["Function"]["Environment"]["Variables"])
    variables.update(
        template["Resources"][function]["Properties"].get("Environment", {}).get("Variables", {})
    )
    assert variables["INDEX_BUCKET"] == {"Ref": "IndexBucket"}
    assert variables["INDEX_PREFIX"] == {"Ref": "IndexPrefix"}
    for name in ("POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL"):
        assert name in variables


# ---------------------------------------------------------------- packaging (sam build without Docker)


def makefile_targets(path: Path) -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_-]+):", path.read_text(), flags=re.MULTILINE))


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_function_is_built_by_its_makefile(template: dict[str, Any], function: str) -> None:
    resource = template["Resources"][function]
    assert resource["Metadata"]["BuildMethod"] == "makefile"
    code_uri = resource["Properties"]["CodeUri"].rstrip("/")
    assert code_uri == FUNCTIONS[function]
    assert f"build-{function}" in makefile_targets(ROOT / code_uri / "Makefile")
    assert {"Ref": "KdbucketsLayer"} in as_list(effective(template, function, "Layers"))


def test_layer_is_built_by_its_makefile_for_python313(template: dict[str, Any]) -> None:
    layer = template["Resources"]["KdbucketsLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Metadata"]["BuildMethod"] == "makefile"
    assert layer["Properties"]["ContentUri"].rstrip("/") == "shared"
    assert list(layer["Properties"]["CompatibleRuntimes"]) == ["python3.13"]
    makefile = ROOT / "shared" / "Makefile"
    assert "build-KdbucketsLayer" in makefile_targets(makefile)
    assert "--python-version 3.13" in makefile.read_text()


def test_outputs_name_what_a_user_needs(template: dict[str, Any]) -> None:
    assert {
        "IndexBucketName",
        "BuildFunctionName",
        "QueryFunctionName",
        "WriteFunctionName",
        "LayerArn",
    } <= set(template["Outputs"])
