"""A small IAM policy evaluator for the tests: enough of AWS's rules to check what the platform
role's identity policy and the bucket policies allow for the requests the chart really makes.

Scope, on purpose: Allow/Deny statements with Action, Resource and the condition operators this
code uses (String*, Null, Bool, NumericLessThan, ArnLike). An explicit Deny wins; otherwise a
request is allowed only if an Allow matches. Keys missing from the request context make
positive operators false and negated ones (StringNotEquals...) true, as in IAM.

Statements come from ``aws_iam_policy_document`` HCL blocks with their ``${...}`` references
rendered to concrete strings by :func:`render`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from tests.terraform.tfhelpers import TfConfig, as_list, document_statements

_REF = re.compile(r"\$\{([A-Za-z0-9_.\[\]\"-]+)\}")


def render(cfg: TfConfig, value: Any, env: dict[str, Any]) -> Any:
    """Replace ``${local.x}``, ``${var.x}`` (its default) and any reference named in ``env``.

    Raises on a reference it cannot resolve, so a test never compares half-rendered text.
    """
    if isinstance(value, list):
        return [render(cfg, v, env) for v in value]
    if isinstance(value, dict):
        return {k: render(cfg, v, env) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def lookup(ref: str) -> Any:
        if ref in env:
            return env[ref]
        kind, _, name = ref.partition(".")
        if kind == "local" and name in cfg.locals:
            return render(cfg, cfg.locals[name], env)
        if kind == "var" and name in cfg.variables and "default" in cfg.variables[name]:
            return cfg.variables[name]["default"]
        raise KeyError(f"{cfg.path.name}: cannot render ${{{ref}}} (add it to env)")

    whole = _REF.fullmatch(value)
    if whole:
        return lookup(whole.group(1))
    out = _REF.sub(lambda m: str(lookup(m.group(1))), value)
    if "${" in out:
        raise KeyError(f"{cfg.path.name}: unrendered expression left in {out!r}")
    return out


@dataclass
class Statement:
    sid: str
    effect: str
    actions: list[str]
    resources: list[str]
    conditions: list[tuple[str, str, list[str]]] = field(default_factory=list)


def statements(
    cfg: TfConfig, doc: str, env: dict[str, Any], key: str | None = None
) -> list[Statement]:
    """The rendered statements of ``data.aws_iam_policy_document.<doc>`` (instance ``[key]`` of
    a for_each document), those of its ``source_policy_documents`` and dynamic ones included
    (a dynamic block counts as present: callers check its ``for_each`` separately)."""
    found = []
    for raw in document_statements(cfg, doc, key):
        assert "not_actions" not in raw and "not_resources" not in raw, raw.get("sid")
        assert "principals" not in raw or doc != "platform", "identity policy with principals"
        found.append(
            Statement(
                sid=raw.get("sid", ""),
                effect=raw.get("effect", "Allow"),
                actions=[str(a) for a in as_list(render(cfg, raw.get("actions", []), env))],
                resources=[str(r) for r in as_list(render(cfg, raw.get("resources", []), env))],
                conditions=[
                    (
                        c["test"],
                        c["variable"],
                        [str(v) for v in as_list(render(cfg, c["values"], env))],
                    )
                    for c in raw.get("condition", [])
                ],
            )
        )
    return found


@dataclass
class Request:
    action: str
    resource: str
    context: dict[str, str] = field(default_factory=dict)


def _condition_holds(test: str, key: str, values: list[str], ctx: dict[str, str]) -> bool:
    present = key in ctx
    actual = ctx.get(key)
    if test == "Null":
        return (not present) == (values[0] == "true")
    if test.startswith("StringNot") or test.startswith("ArnNot"):
        if not present:
            return True
        positive = test.replace("Not", "", 1)
        return not _condition_holds(positive, key, values, ctx)
    if not present:
        return False
    assert actual is not None
    if test == "StringEquals":
        return actual in values
    if test in ("StringLike", "ArnLike"):
        return any(fnmatchcase(actual, v) for v in values)
    if test == "Bool":
        return actual.lower() in [v.lower() for v in values]
    if test == "NumericLessThan":
        return any(float(actual) < float(v) for v in values)
    raise NotImplementedError(f"condition operator {test} is not modelled")


def matches(stmt: Statement, req: Request) -> bool:
    if not any(fnmatchcase(req.action.lower(), a.lower()) for a in stmt.actions):
        return False
    if not any(fnmatchcase(req.resource, r) for r in stmt.resources):
        return False
    return all(_condition_holds(t, k, v, req.context) for t, k, v in stmt.conditions)


def allows(policy: list[Statement], req: Request) -> bool:
    """Whether this one policy, alone, allows the request (an Allow matches, no Deny does)."""
    if denies(policy, req):
        return False
    return any(s.effect == "Allow" and matches(s, req) for s in policy)


def denies(policy: list[Statement], req: Request) -> bool:
    return any(s.effect == "Deny" and matches(s, req) for s in policy)
