"""audiencectl: the operator's command line, talking gRPC to the services.

Values meant for scripts (a new key, a new connector id) go to stdout alone; explanations
go to stderr. ``--json`` prints every answer as the proto's JSON form instead.
"""

import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click
import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from protos.audience.v1 import audience_pb2, audience_pb2_grpc
from protos.keys.v1 import keys_pb2, keys_pb2_grpc
from protos.segment.v1 import segment_pb2, segment_pb2_grpc
from services.common.validation import AUDIENCE_ID_MAX, MPID_MAX, MPID_MIN, PAGE_SIZE_MAX


class Context:
    def __init__(self, targets: dict[str, str], timeout: float, as_json: bool) -> None:
        self.targets = targets
        self.timeout = timeout
        self.as_json = as_json

    @contextmanager
    def stub(self, service: str) -> Iterator[Any]:
        stub_class = {
            "keys": keys_pb2_grpc.KeyServiceStub,
            "audience": audience_pb2_grpc.AudienceServiceStub,
            "segment": segment_pb2_grpc.SegmentServiceStub,
        }[service]
        # Answers as large as the services send each other (an account's whole audience list).
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        with grpc.insecure_channel(self.targets[service], options=options) as channel:
            yield stub_class(channel)

    def call(self, service: str, method: str, request: Message) -> Any:
        """Call ``service.method``; a gRPC error ends the command with its code and details."""
        with self.stub(service) as stub:
            try:
                return getattr(stub, method)(request, timeout=self.timeout)
            except grpc.RpcError as error:
                code = error.code()
                details = error.details()
                raise click.ClickException(
                    f"{service} ({self.targets[service]}): {code.name}: {details}"
                ) from None

    def emit(
        self, message: Message, human: Callable[[], None], extra: dict[str, Any] | None = None
    ) -> None:
        """``message`` as JSON (with ``extra``'s fields beside its own) or for people."""
        if self.as_json:
            click.echo(json.dumps(_to_json(message) | (extra or {}), indent=2))
        else:
            human()


def _json_after_command(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_object(Context).as_json = True  # type: ignore[union-attr]


def pass_context(command: Callable[..., None]) -> Callable[..., None]:
    """Pass the Context to a command, which also takes ``--json`` after its name."""
    json_option = click.option(
        "--json",
        is_flag=True,
        expose_value=False,
        callback=_json_after_command,
        help="Print the answer as JSON (64-bit integers as strings).",
    )
    return json_option(click.make_pass_decorator(Context)(command))


class _Text(click.ParamType):
    """Text the services can be sent: UTF-8 (a shell can pass bytes that are not)."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            str(value).encode("utf-8")
        except UnicodeEncodeError:
            self.fail("must be UTF-8 text", param, ctx)
        return str(value)


TEXT = _Text()
# The ranges the services accept.
AUDIENCE_ID = click.IntRange(1, AUDIENCE_ID_MAX)
MPID = click.IntRange(MPID_MIN, MPID_MAX)

account_option = click.option("--account", required=True, type=TEXT, help="Account id.")


def _seconds(_ctx: click.Context, _param: click.Parameter, value: float) -> float:
    if not (math.isfinite(value) and 0 < value <= 3600):
        raise click.BadParameter("must be a number of seconds above 0, at most 3600")
    return value


@click.group()
@click.option(
    "--keys",
    "keys_target",
    envvar="KEYS_TARGET",
    default="127.0.0.1:50051",
    show_default=True,
    help="keys service address [env KEYS_TARGET]",
)
@click.option(
    "--audience",
    "audience_target",
    envvar="AUDIENCE_TARGET",
    default="127.0.0.1:50052",
    show_default=True,
    help="audience service address [env AUDIENCE_TARGET]",
)
@click.option(
    "--segment",
    "segment_target",
    envvar="SEGMENT_TARGET",
    default="127.0.0.1:50053",
    show_default=True,
    help="segment service address [env SEGMENT_TARGET]",
)
@click.option(
    "--timeout",
    default=5.0,
    show_default=True,
    callback=_seconds,
    help="Deadline of each call, seconds.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print answers as JSON (the proto3 mapping: 64-bit integers as strings). "
    "Before the command or after it.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    keys_target: str,
    audience_target: str,
    segment_target: str,
    timeout: float,
    as_json: bool,
) -> None:
    """Manage API keys and connectors, and inspect segments and memberships."""
    targets = {"keys": keys_target, "audience": audience_target, "segment": segment_target}
    ctx.obj = Context(targets, timeout, as_json)


@cli.group()
def keys() -> None:
    """API keys that customers paste into mParticle."""


@keys.command("create")
@account_option
@click.option("--connector", required=True, type=TEXT, help="Connector id the key sends to.")
@pass_context
def keys_create(ctx: Context, account: str, connector: str) -> None:
    """Create a key; prints it once (only its hash is kept)."""
    ctx.call(
        "segment",
        "GetConnector",
        segment_pb2.GetConnectorRequest(account_id=account, connector_id=connector),
    )
    reply = ctx.call(
        "keys", "CreateKey", keys_pb2.CreateKeyRequest(account_id=account, connector_id=connector)
    )

    def human() -> None:
        click.echo(reply.plaintext)
        click.echo(
            f"Key {reply.key.prefix} created for connector {connector}. It is shown only once: "
            "paste it into mParticle's destination settings as the API Key.",
            err=True,
        )

    ctx.emit(reply, human)


@keys.command("list")
@account_option
@pass_context
def keys_list(ctx: Context, account: str) -> None:
    """List an account's keys (never their secrets)."""
    reply = ctx.call("keys", "ListKeys", keys_pb2.ListKeysRequest(account_id=account))

    def human() -> None:
        rows = [
            (
                k.key_id,
                k.prefix,
                k.connector_id,
                _time(k.created_at_ms),
                _time(k.last_used_at_ms),
                "revoked " + _time(k.revoked_at_ms) if k.revoked_at_ms else "active",
            )
            for k in reply.keys
        ]
        _table(("KEY ID", "PREFIX", "CONNECTOR", "CREATED", "LAST USED", "STATUS"), rows)

    ctx.emit(reply, human)


@keys.command("revoke")
@account_option
@click.argument("key_id", type=TEXT)
@pass_context
def keys_revoke(ctx: Context, account: str, key_id: str) -> None:
    """Revoke a key for good, by its id or its prefix (ak_<id>), as `keys list` shows them."""
    key_id = key_id.removeprefix("ak_")
    reply = ctx.call(
        "keys", "RevokeKey", keys_pb2.RevokeKeyRequest(account_id=account, key_id=key_id)
    )
    ctx.emit(reply, lambda: click.echo(f"Key {reply.key.key_id} ({reply.key.prefix}) revoked."))


@cli.group()
def connectors() -> None:
    """Named mParticle connectors."""


@connectors.command("create")
@account_option
@click.option("--name", required=True, type=TEXT, help="Name shown in the segment builder.")
@pass_context
def connectors_create(ctx: Context, account: str, name: str) -> None:
    """Create a connector; prints its id."""
    reply = ctx.call(
        "segment",
        "CreateConnector",
        segment_pb2.CreateConnectorRequest(account_id=account, name=name),
    )

    def human() -> None:
        click.echo(reply.connector.connector_id)
        click.echo(f"Connector {reply.connector.name!r} created.", err=True)

    ctx.emit(reply, human)


@connectors.command("list")
@account_option
@pass_context
def connectors_list(ctx: Context, account: str) -> None:
    """List an account's connectors."""
    reply = ctx.call(
        "segment", "ListConnectors", segment_pb2.ListConnectorsRequest(account_id=account)
    )
    rows = [(c.connector_id, c.name, _time(c.created_at_ms)) for c in reply.connectors]
    ctx.emit(reply, lambda: _table(("CONNECTOR ID", "NAME", "CREATED"), rows))


@connectors.command("delete")
@account_option
@click.argument("connector_id", type=TEXT)
@click.option("--keep-keys", is_flag=True, help="Do not revoke the connector's keys.")
@pass_context
def connectors_delete(ctx: Context, account: str, connector_id: str, keep_keys: bool) -> None:
    """Delete a connector and, unless --keep-keys, revoke its keys."""
    reply = ctx.call(
        "segment",
        "DeleteConnector",
        segment_pb2.DeleteConnectorRequest(account_id=account, connector_id=connector_id),
    )

    revoked = []
    if not keep_keys:
        listing = ctx.call("keys", "ListKeys", keys_pb2.ListKeysRequest(account_id=account))
        for key in listing.keys:
            if key.connector_id == connector_id and not key.revoked_at_ms:
                request = keys_pb2.RevokeKeyRequest(account_id=account, key_id=key.key_id)
                revoked.append(ctx.call("keys", "RevokeKey", request).key.key_id)

    def human() -> None:
        click.echo(f"Connector {connector_id} deleted; keys revoked: {len(revoked)}.")

    ctx.emit(reply, human, {"revoked_key_ids": revoked})


@cli.group()
def segments() -> None:
    """The segment builder's view."""


@segments.command("list")
@account_option
@pass_context
def segments_list(ctx: Context, account: str) -> None:
    """Each connector with its audiences that have members."""
    reply = ctx.call("segment", "ListSegments", segment_pb2.ListSegmentsRequest(account_id=account))

    def human() -> None:
        rows = []
        for entry in reply.connectors:
            connector = f"{entry.connector.name} ({entry.connector.connector_id})"
            if not entry.segments:
                rows.append((connector, "-", "(no audience with members yet)", "", ""))
            for s in entry.segments:
                rows.append(
                    (connector, s.audience_id, s.name, s.member_count, _time(s.updated_at_ms))
                )
        _table(("CONNECTOR", "AUDIENCE ID", "NAME", "MEMBERS", "UPDATED"), rows)

    ctx.emit(reply, human)


@cli.group()
def users() -> None:
    """Look up users by MPID."""


@users.command("audiences")
@account_option
@click.option("--mpid", required=True, type=MPID, help="mParticle ID (signed 64-bit).")
@pass_context
def users_audiences(ctx: Context, account: str, mpid: int) -> None:
    """The audiences an MPID is in."""
    reply = ctx.call(
        "audience",
        "GetUserAudiences",
        audience_pb2.GetUserAudiencesRequest(account_id=account, mpid=mpid),
    )

    def human() -> None:
        if not reply.audience_ids:
            click.echo(f"MPID {mpid} is in no audience.")
        for audience_id in reply.audience_ids:
            click.echo(audience_id)

    ctx.emit(reply, human)


@cli.group()
def audiences() -> None:
    """Audiences and their members."""


@audiences.command("list")
@account_option
@pass_context
def audiences_list(ctx: Context, account: str) -> None:
    """Every audience of the account, empty ones included."""
    found: dict[int, audience_pb2.Audience] = {}
    token = ""
    while True:
        page = ctx.call(
            "audience",
            "ListAudiences",
            audience_pb2.ListAudiencesRequest(
                account_id=account, page_size=PAGE_SIZE_MAX, page_token=token
            ),
        )
        found.update((a.audience_id, a) for a in page.audiences)
        token = page.next_page_token
        if not token:
            break

    reply = audience_pb2.ListAudiencesResponse(audiences=[found[a] for a in sorted(found)])
    rows = [
        (a.audience_id, a.name, a.connector_id, "yes" if a.subscribed else "no", a.member_count)
        for a in reply.audiences
    ]
    ctx.emit(
        reply, lambda: _table(("AUDIENCE ID", "NAME", "CONNECTOR", "SUBSCRIBED", "MEMBERS"), rows)
    )


@audiences.command("members")
@account_option
@click.option("--audience", "audience_id", required=True, type=AUDIENCE_ID, help="Audience id.")
@pass_context
def audiences_members(ctx: Context, account: str, audience_id: int) -> None:
    """Every MPID in an audience, one per line (with --json, one JSON string per line: JSON
    Lines, so that an audience of millions streams)."""
    token = ""
    while True:
        reply = ctx.call(
            "audience",
            "ListMembers",
            audience_pb2.ListMembersRequest(
                account_id=account,
                audience_id=audience_id,
                page_size=PAGE_SIZE_MAX,
                page_token=token,
            ),
        )
        for mpid in reply.mpids:
            click.echo(json.dumps(str(mpid)) if ctx.as_json else mpid)
        token = reply.next_page_token
        if not token:
            return


def _to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _time(epoch_ms: int) -> str:
    if not epoch_ms:
        return "-"
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _cell(value: Any) -> str:
    """Text as one table cell: control characters (a newline in a name) are escaped."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(value))


def _table(headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    cells = [tuple(map(_cell, headers)), *(tuple(map(_cell, row)) for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


if __name__ == "__main__":
    sys.exit(cli())
