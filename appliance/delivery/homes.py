"""Local mail for an account whose home is another box of the fleet goes to that box (docs/fleet.md).

`routing.route` decides by domain only; for a local domain this splits the recipients by their
account's `home` (appliance/fleet_config.py): those at home here stay local, the others become a
`home:BOX` destination, delivered to that box's relay (`fleet.boxes.BOX.relay`, its port 25
listener) with STARTTLS required and its certificate verified against `fleet.ca_file` (the
manager's ``_deliver_group``). The home box then delivers them into its Maildirs. The recipient
address is sent as it is (an alias is resolved again there, from the same shared accounts).

An accounts database that cannot answer holds the recipients (a temporary failure, retried):
never delivered into a Maildir on the wrong box, never bounced for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.accounts import AccountsUnavailable
from appliance.delivery.routing import Destination, Hop, Route

if TYPE_CHECKING:
    from appliance.accounts import AccountStore
    from appliance.accounts_pg import PgAccountStore
    from appliance.config import Config


def home_of(cfg: Config, store: AccountStore | PgAccountStore, rcpt: str) -> str:
    """The other box RCPT's account lives on; "" for this box (or no such account: local delivery says so)."""
    owner = store.owner_of(rcpt)
    account = store.get(owner) if owner is not None else None
    return cfg.fleet.home_of(account.home) if account is not None else ""


def split_local(cfg: Config, store: AccountStore | PgAccountStore,
                groups: dict[str, tuple[Route, list[str]]]) -> dict[str, tuple[Route, list[str]]]:
    """GROUPS (destination key -> route, recipients) with each local group's recipients whose home is
    another box moved to that box's `home:BOX` group. Blocking (account lookups): run it in a thread."""
    out: dict[str, tuple[Route, list[str]]] = {}
    for key, (rt, rcpts) in groups.items():
        if rt.destination.kind != "local":
            out[key] = (rt, rcpts)
            continue
        for r in rcpts:
            new = _route_for(cfg, store, rt, r)
            out.setdefault(new.destination.key, (new, []))[1].append(r)
    return out


def _route_for(cfg: Config, store: AccountStore | PgAccountStore, local: Route, rcpt: str) -> Route:
    domain = local.destination.domain
    try:
        home = home_of(cfg, store, rcpt)
    except AccountsUnavailable as exc:
        return Route(Destination("hold", "hold:accounts", domain=domain), reason=str(exc))
    if not home:
        return local
    box = cfg.fleet.boxes.get(home)
    if box is None:  # an account moved to a box this box's config does not know yet: wait, never guess
        return Route(Destination("hold", f"hold:home:{home}", domain=domain),
                     reason=f"home box {home} of <{rcpt}> is not in fleet.boxes")
    host, port = box.relay_hop()
    # Hop.host is the name the certificate must carry; Hop.address the address dialled.
    return Route(Destination("home", f"home:{home}", domain=domain), (Hop(box.name_for(host), port, address=host),))
