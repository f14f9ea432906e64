"""Example workflows loaded by the default config (``make run``).

Each one shows one part of the SDK; the README's tour drives them from a second terminal.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from runtime import (
    Batch,
    CancelOn,
    Context,
    FatalError,
    OnEvent,
    RetryPolicy,
    Schedule,
    workflow,
)

# --- greeting: steps and a durable sleep ------------------------------------------------------


def _normalise(name: str) -> str:
    return name.strip().title()


@workflow(id="greeting", description="Say hello, wait a moment, say goodbye.")
async def greeting(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    name = await ctx.step("normalise", _normalise, input.get("name", "world"))
    await ctx.sleep(input.get("pause", "2s"))
    farewell = await ctx.step("farewell", lambda: f"goodbye {name}")
    return {"greeting": f"hello {name}", "farewell": farewell}


# --- order saga: compensation -----------------------------------------------------------------


async def _reserve(order: dict[str, Any]) -> dict[str, Any]:
    return {"reservation": f"res-{order['id']}", "items": order.get("items", [])}


async def _release(reservation: dict[str, Any]) -> None:
    return None


async def _charge(order: dict[str, Any]) -> dict[str, Any]:
    return {"charge": f"ch-{order['id']}", "amount": order.get("amount", 0)}


async def _refund(charge: dict[str, Any]) -> None:
    return None


async def _ship(order: dict[str, Any]) -> dict[str, Any]:
    if order.get("fail_shipping"):
        raise FatalError("no courier available", code="NO_COURIER")
    return {"tracking": f"trk-{order['id']}"}


@workflow(id="order-saga", description="Reserve, charge, ship; undo in reverse if shipping fails.")
async def order_saga(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    reservation = await ctx.step("reserve", _reserve, input, compensate=_release)
    charge = await ctx.step("charge", _charge, input, compensate=_refund)
    ctx.metadata.set("stage", "charged")
    shipment = await ctx.step("ship", _ship, input, retry=RetryPolicy(max=2, initial="1s"))
    ctx.metadata.set("stage", "shipped")
    return {**reservation, **charge, **shipment}


# --- human approval: a token with a timeout ---------------------------------------------------


@workflow(id="approval", description="Wait for a person to approve (token), or give up.")
async def approval(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    token = await ctx.wait_for_token(timeout=input.get("timeout", "1h"))
    ctx.metadata.set("token", token.id)
    decision = await token.wait()
    if decision is None:
        return {"approved": False, "reason": "timed out"}
    return {"approved": bool(decision.get("approved")), "by": decision.get("by")}


# --- fan-out: parallel steps and child runs ---------------------------------------------------


async def _score(item: str) -> float:
    return round(random.random(), 3)


@workflow(id="score-item", description="Child workflow: score one item.")
async def score_item(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return {"item": input["item"], "score": await ctx.step("score", _score, input["item"])}


@workflow(id="fan-out", description="Score items in parallel child runs, then pick the best.")
async def fan_out(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    items = input.get("items", ["a", "b", "c"])

    async def one(item: str, index: int) -> dict[str, Any]:
        result: dict[str, Any] = await ctx.invoke(score_item, {"item": item})
        return result

    scores = await ctx.parallel(items, one, concurrency=input.get("concurrency", 4))
    best = max(scores, key=lambda s: s["score"])
    return {"scores": scores, "best": best["item"]}


# --- event-driven: wait_for_event with match --------------------------------------------------


@workflow(id="payment-watch", description="Wait until the order's payment event arrives.")
async def payment_watch(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    order_id = input["order_id"]
    payment = await ctx.wait_for_event(
        "payment.received", match={"order_id": order_id}, timeout=input.get("timeout", "1d")
    )
    if payment is None:
        return {"order_id": order_id, "paid": False}
    receipt = await ctx.step("receipt", lambda: f"receipt for {order_id}: {payment['amount']}")
    return {"order_id": order_id, "paid": True, "receipt": receipt}


# --- scheduled: a cron schedule in a time zone --------------------------------------------------


@workflow(
    id="nightly-report",
    description="Count yesterday's orders and store a report, every night at 03:00 Paris time.",
    schedule=Schedule(cron="0 3 * * *", timezone="Europe/Paris", name="nightly-report",
                      input={"report": "orders"}, overlap="skip"),
)
async def nightly_report(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    # The run id carries the due time (sched:nightly-report:<UTC>); ctx.now() replays as recorded.
    day = (ctx.now() - timedelta(days=1)).date().isoformat()
    count = await ctx.step("count", lambda: random.randint(0, 500))
    return {"report": input["report"], "day": day, "orders": count}


# --- event triggers: a run per event, cancelled by a later one ----------------------------------


async def _send_email(user_id: str, template: str) -> str:
    return f"{template} mail sent to {user_id}"


@workflow(
    id="welcome",
    description="Started by user.signed_up: a welcome mail now, a follow-up three days later; "
    "a user.deleted event for the same user cancels it.",
    on_event=OnEvent("user.signed_up"),
    cancel_on=[CancelOn("user.deleted", match=lambda i: {"user_id": i["user_id"]})],
)
async def welcome(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    # The input is the event's payload; the run id is derived from the event's id.
    user_id = input["user_id"]
    sent = await ctx.step("welcome", _send_email, user_id, "welcome")
    await ctx.sleep(input.get("follow_up_after", "3d"))
    follow_up = await ctx.step("follow-up", _send_email, user_id, "follow-up")
    return {"user_id": user_id, "sent": [sent, follow_up]}


# --- event batches: one run per 10 clicks on a page, or 30 s after the first --------------------


def _summarise(events: list[dict[str, Any]]) -> dict[str, Any]:
    users = sorted({str(e.get("user_id")) for e in events if e.get("user_id") is not None})
    return {"page": events[0].get("page"), "clicks": len(events), "users": users}


@workflow(
    id="click-digest",
    description="Summarise page.clicked events in batches of up to 10 per page (30 s at most).",
    on_event=OnEvent("page.clicked", batch=Batch(10, "30s", key=lambda p: p["page"])),
)
async def click_digest(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    # input == {"events": [payload, ...]}, oldest first, all of one page.
    summary: dict[str, Any] = await ctx.step("summarise", _summarise, input["events"])
    return summary
