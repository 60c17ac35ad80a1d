"""The labelling app's API and its campaign logic, in process (Starlette's test client): assignment
with redundancy, gold and repeated items, expert routing, idempotent labels, export, online feedback,
and the security rules (tokens, roles, origins, sizes, HTML shown as text)."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from rlhf_lab.labelling.campaign import Campaign, CampaignSettings
from rlhf_lab.labelling.server import MAX_BODY_BYTES, create_app, display_order
from rlhf_lab.labelling.store import Label, LabelStore

SCRIPT = "<script>window.pwned = 1</script><b>bold</b>"


class App:
    """A campaign with an admin, two crowd labellers, an expert and an app token, and a client."""

    def __init__(self, tmp_path, **settings):
        self.store = LabelStore(tmp_path / "labels.db")
        self.campaign = Campaign(self.store, "c", CampaignSettings(**settings))
        self.tokens = {name: self.store.add_labeller("c", name, role) for name, role in
                       [("admin", "admin"), ("ann", "crowd"), ("bob", "crowd"), ("eve", "expert"), ("shop", "app")]}
        self.client = TestClient(create_app(self.campaign, {"http://testserver"}))

    def auth(self, name):
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    def get(self, path, name):
        return self.client.get(path, headers=self.auth(name))

    def post(self, path, name, body=None, **kwargs):
        return self.client.post(path, headers={**self.auth(name), **kwargs.pop("headers", {})}, json=body, **kwargs)

    def next(self, name):
        response = self.get("/api/next", name)
        assert response.status_code == 200, response.text
        return response.json()["item"]

    def answer(self, name, item_id, **answer):
        """``name`` asks for the next item, which must be ``item_id``, and answers it."""
        assert self.next(name)["id"] == item_id
        return self.post("/api/labels", name, {"item_id": item_id, **answer})

    def choose_first_shown(self, name, item):
        return self.post("/api/labels", name, {"item_id": item["id"], "ranking": [r["index"] for r in item["responses"]]})


@pytest.fixture
def app(tmp_path):
    return App(tmp_path, redundancy=2)


def add(app, n=3, k=2, batch="b", **extra):
    return app.store.add_items("c", batch, [{"prompt": f"prompt {i}", "responses": [f"r{i}.{j}" for j in range(k)], **extra} for i in range(n)])


# --- assignment -----------------------------------------------------------------------------------


def test_each_item_goes_to_redundancy_labellers_and_no_one_twice(app):
    ids = add(app, n=2)
    seen = {"ann": [], "bob": []}
    for name in ("ann", "bob", "ann", "bob"):
        item = app.next(name)
        seen[name].append(item["id"])
        assert app.post("/api/labels", name, {"item_id": item["id"], "ranking": [0, 1]}).json() == {"saved": True, "duplicate": False}
    assert sorted(seen["ann"]) == ids and sorted(seen["bob"]) == ids
    assert app.next("ann") is None and app.next("bob") is None
    assert app.campaign.batch_progress("b") == (2, 2)


def test_concurrent_labellers_get_different_items_and_a_reload_the_same(app):
    app.campaign.settings.redundancy = 1
    add(app, n=2)
    first, again, other = app.next("ann"), app.next("ann"), app.next("bob")
    assert first["id"] == again["id"] and other["id"] != first["id"]
    assert [r["text"] for r in first["responses"]] == [r["text"] for r in again["responses"]]


def test_responses_are_shown_in_a_per_labeller_order_with_their_indices(app):
    add(app, n=1, k=4)
    item = app.next("ann")
    labeller = app.store.labeller("c", "ann")
    order = display_order(labeller.id, item["id"], 4)
    assert [r["index"] for r in item["responses"]] == order
    assert [r["text"] for r in item["responses"]] == [f"r0.{i}" for i in order]
    assert sorted(order) == [0, 1, 2, 3]


def test_gold_items_go_to_everyone_and_their_answer_is_never_sent(app):
    app.campaign.settings.redundancy = 1
    (gold_id,) = add(app, n=1, gold=[1, 0])
    for name in ("ann", "bob"):
        response = app.get("/api/next", name)
        assert response.json()["item"]["id"] == gold_id
        assert "gold" not in response.text and "[1, 0]" not in response.text
        app.choose_first_shown(name, response.json()["item"])
    status = app.get("/api/status", "admin").json()
    assert status["gold_items"] == 1 and all(q["gold_labels"] == 1 for q in status["labellers"] if q["role"] == "crowd")


def test_a_repeat_comes_only_after_its_original_and_counts_for_self_consistency(app):
    app.campaign.settings.redundancy = 1
    (original,) = app.store.add_items("c", "b", [{"prompt": "p", "responses": ["x", "y"], "key": "k"}])
    (repeat,) = app.store.add_items("c", "b", [{"prompt": "p", "responses": ["x", "y"], "key": "rk", "repeat_of_key": "k"}])
    item = app.next("ann")
    assert item["id"] == original
    app.post("/api/labels", "ann", {"item_id": original, "ranking": [0, 1]})
    assert app.next("ann")["id"] == repeat
    app.post("/api/labels", "ann", {"item_id": repeat, "ranking": [1, 0]})
    ann = next(q for q in app.get("/api/status", "admin").json()["labellers"] if q["name"] == "ann")
    assert (ann["repeats"], ann["self_consistency"]) == (1, 0.0)
    assert app.campaign.batch_progress("b") == (1, 1)  # a repeat is not an item to finish
    assert len(app.campaign.export().records) == 1


def test_disagreement_goes_to_the_expert_who_decides(app):
    (item_id,) = add(app, n=1)
    app.answer("ann", item_id, ranking=[0, 1])
    app.answer("bob", item_id, ranking=[1, 0])
    assert app.campaign.batch_progress("b") == (0, 1)  # waiting for the expert
    assert app.next("eve")["id"] == item_id
    app.answer("eve", item_id, ranking=[1, 0])
    assert app.campaign.batch_progress("b") == (1, 1)
    records = app.get("/api/export", "admin").json()["records"]
    assert records[0]["ranking"] == [1, 0] and records[0]["meta"]["decided_by"] == "expert"
    assert records[0]["meta"]["agreement"] == 0.0


def test_skips_by_every_labeller_finish_an_item(app):
    (item_id,) = add(app, n=1)
    for name in ("ann", "bob"):
        assert app.answer(name, item_id, skip=True).status_code == 200
    assert app.campaign.batch_progress("b") == (1, 1)
    assert app.get("/api/export", "admin").json()["records"] == []


def test_the_campaign_batch_limits_what_is_offered(app):
    add(app, n=1, batch="round1")
    (later,) = add(app, n=1, batch="round2")
    app.campaign.batch = "round2"
    assert app.next("ann")["id"] == later


# --- labels: durable, idempotent, validated --------------------------------------------------------


def test_a_retry_is_a_duplicate_and_a_different_answer_a_conflict(app):
    (item_id,) = add(app, n=1)
    assert app.next("ann")["id"] == item_id
    body = {"item_id": item_id, "ranking": [1, 0], "rating": 6, "reason": "more on topic", "seconds": 3.5}
    assert app.post("/api/labels", "ann", body).json() == {"saved": True, "duplicate": False}
    assert app.post("/api/labels", "ann", body).json() == {"saved": True, "duplicate": True}
    conflict = app.post("/api/labels", "ann", {"item_id": item_id, "ranking": [0, 1]})
    assert conflict.status_code == 409 and "already labelled" in conflict.json()["error"]
    (label,) = app.store.labels("c")
    assert (label.ranking, label.rating, label.reason, label.seconds) == ([1, 0], 6, "more on topic", 3.5)


@pytest.mark.parametrize(
    "body, status, reason",
    [
        ({"item_id": "1", "ranking": [0, 1]}, 422, "'item_id' must be an item's id"),
        ({"item_id": True, "ranking": [0, 1]}, 422, "'item_id' must be an item's id"),
        ({"item_id": 10**30, "ranking": [0, 1]}, 422, "'item_id' must be an item's id"),
        ({"item_id": 999, "ranking": [0, 1]}, 404, "no item 999"),
        ({"item_id": 1}, 422, "exactly one of"),
        ({"item_id": 1, "ranking": [0, 1], "skip": True}, 422, "exactly one of"),
        ({"item_id": 1, "ranking": [0, 0]}, 422, "indices 0..1 once each"),
        ({"item_id": 1, "ranking": [0, 1, 2]}, 422, "indices 0..1 once each"),
        ({"item_id": 1, "ranking": [True, False]}, 422, "indices 0..1 once each"),
        ({"item_id": 1, "tie": "yes"}, 422, "true or false"),
        ({"item_id": 1, "ranking": [0, 1], "rating": 8}, 422, "from 1 to 7"),
        ({"item_id": 1, "ranking": [0, 1], "reason": "x" * 2001}, 422, "at most 2000"),
        ({"item_id": 1, "ranking": [0, 1], "seconds": -1}, 422, "'seconds' must be a number from 0"),
        ({"item_id": 1, "ranking": [0, 1], "seconds": 10**400}, 422, "'seconds' must be a number from 0"),
        ({"item_id": 1, "ranking": [0, 1], "seconds": 1e300}, 422, "'seconds' must be a number from 0"),
        ({"item_id": 1, "ranking": [0, 1], "gold": [0, 1]}, 422, "unknown field"),
        ([1, 2], 422, "JSON object"),
    ],
)
def test_malformed_labels_get_a_4xx_with_the_reason_and_store_nothing(app, body, status, reason):
    add(app, n=1)
    app.next("ann")
    response = app.post("/api/labels", "ann", body)
    assert response.status_code == status and reason in response.json()["error"]
    assert app.store.count_labels("c") == 0


def test_a_tie_is_only_for_two_responses(app):
    (item_id,) = add(app, n=1, k=3)
    response = app.post("/api/labels", "ann", {"item_id": item_id, "tie": True})
    assert response.status_code == 422 and "two responses" in response.json()["error"]


def test_bodies_that_are_not_json_or_too_large_are_refused(app):
    add(app, n=1)
    headers = {**app.auth("ann"), "Content-Type": "application/json"}
    assert app.client.post("/api/labels", headers=headers, content=b"{not json").status_code == 400
    big = app.client.post("/api/labels", headers=headers, content=b" " * (MAX_BODY_BYTES + 1))
    assert big.status_code == 413 and "bytes" in big.json()["error"]
    form = app.client.post("/api/labels", headers=app.auth("ann"), data={"item_id": "1", "skip": "true"})
    assert form.status_code == 415
    assert app.store.count_labels("c") == 0


# --- security --------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}])
def test_without_a_valid_token_every_api_call_is_401_and_changes_nothing(app, headers):
    (item_id,) = add(app, n=1)
    for method, path, body in [
        ("GET", "/api/me", None), ("GET", "/api/next", None), ("POST", "/api/labels", {"item_id": item_id, "skip": True}),
        ("GET", "/api/status", None), ("GET", "/api/export", None), ("POST", "/api/labellers/ann/exclude", {"excluded": True}),
        ("POST", "/api/online/responses", {"prompt": "p", "responses": ["r"]}),
    ]:
        response = app.client.request(method, path, headers=headers, json=body)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
    assert app.store.count_labels("c") == 0 and len(app.store.items("c")) == 1
    assert not any(p.excluded for p in app.store.labellers("c"))


def test_a_token_of_another_campaign_is_refused(app, tmp_path):
    other = app.store.add_labeller("other", "mallory", "admin")
    assert app.client.get("/api/status", headers={"Authorization": f"Bearer {other}"}).status_code == 401


def test_labellers_cannot_see_figures_exports_or_others_labels(app):
    (item_id,) = add(app, n=1)
    app.answer("ann", item_id, ranking=[1, 0], reason="ann's secret reason")
    for path in ("/api/status", "/api/export"):
        assert app.get(path, "bob").status_code == 403
    assert app.post("/api/labellers/ann/exclude", "bob", {"excluded": True}).status_code == 403
    for path in ("/api/me", "/api/next"):
        assert "secret" not in app.get(path, "bob").text
    # Bob cannot overwrite Ann's label: his answer is his own row.
    app.answer("bob", item_id, ranking=[0, 1])
    ann = app.store.labeller("c", "ann")
    assert [l.ranking for l in app.store.labels("c", labeller_id=ann.id)] == [[1, 0]]
    # The app token cannot label, and labellers cannot log online feedback.
    assert app.post("/api/labels", "shop", {"item_id": item_id, "skip": True}).status_code == 403
    assert app.post("/api/online/responses", "ann", {"prompt": "p", "responses": ["r"]}).status_code == 403


def test_requests_from_another_origin_are_refused(app):
    (item_id,) = add(app, n=1)
    response = app.post("/api/labels", "ann", {"item_id": item_id, "skip": True}, headers={"Origin": "http://evil.example"})
    assert response.status_code == 403 and "origin" in response.json()["error"]
    # The origin is compared with where the app is served, not with the Host header the sender wrote.
    forged = app.post("/api/labels", "ann", {"item_id": item_id, "skip": True}, headers={"Origin": "http://evil.example", "Host": "evil.example"})
    assert forged.status_code == 403
    app.next("ann")
    same = app.post("/api/labels", "ann", {"item_id": item_id, "skip": True}, headers={"Origin": "http://testserver"})
    assert same.status_code == 200
    assert app.store.count_labels("c") == 1


def test_pages_forbid_inline_script_and_show_text_as_text(app):
    app.store.add_items("c", "b", [{"prompt": SCRIPT, "responses": [SCRIPT, "plain"]}])
    page = app.client.get("/")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text.replace('<script src="/static/label.js" defer></script>', "")
    script = app.client.get("/static/label.js").text
    assert "innerHTML" not in script and "textContent" in script
    item = app.next("ann")
    assert item["prompt"] == SCRIPT  # delivered as JSON data, rendered with textContent
    assert app.client.get("/static/../store.py").status_code == 404
    assert app.client.get("/static/nothing.js").status_code == 404


# --- status, export, exclusion ----------------------------------------------------------------------


def test_status_and_export_carry_agreement_and_exclusions(app):
    app.campaign.settings.expert_threshold = 0  # no routing: the tied item stays unresolved
    ids = add(app, n=3)
    for item_id in ids:
        app.answer("ann", item_id, ranking=[0, 1])
        app.answer("bob", item_id, ranking=[0, 1] if item_id != ids[0] else [1, 0])
    status = app.get("/api/status", "admin").json()
    assert status["labels"] == 6 and status["batches"] == {"b": {"done": 3, "items": 3}}
    assert status["mean_item_agreement"] == pytest.approx(2 / 3)
    # Units: (+1,-1), (+1,+1), (+1,+1): o_11 = 4, o_1-1 = o_-11 = 1; n_1 = 5, n_-1 = 1, n = 6 -> 1 - 5*2/10 = 0.
    assert status["krippendorff_alpha"] == pytest.approx(0.0)
    exported = app.get("/api/export", "admin").json()
    assert [r["meta"]["agreement"] for r in exported["records"]] == [1.0, 1.0] and exported["unresolved"] == 1
    assert app.post("/api/labellers/bob/exclude", "admin", {"excluded": True}).json() == {"name": "bob", "excluded": True}
    exported = app.get("/api/export", "admin").json()
    assert len(exported["records"]) == 3 and all(r["ranking"] == [0, 1] for r in exported["records"])
    assert app.post("/api/labellers/nobody/exclude", "admin", {"excluded": True}).status_code == 404
    assert app.get("/api/export?method=mean", "admin").status_code == 422


def test_flagged_labellers_are_left_out_of_the_export(app):
    app.campaign.settings.redundancy = 2
    gold = add(app, n=3, gold=[0, 1])
    (plain,) = app.store.add_items("c", "b", [{"prompt": "q", "responses": ["x", "y"]}])
    for item_id in gold:
        app.answer("ann", item_id, ranking=[0, 1])
        app.answer("bob", item_id, ranking=[1, 0])
    app.answer("ann", plain, ranking=[1, 0])
    app.answer("bob", plain, ranking=[0, 1])
    bob = next(q for q in app.campaign.quality() if q.name == "bob")
    assert bob.flags and bob.gold_accuracy == 0.0
    record = next(r for r in app.campaign.export().records if r.meta["item_id"] == plain)
    assert record.ranking == [1, 0]
    assert app.campaign.export(exclude_flagged=False).unresolved == 4  # with bob kept, every item is a 1-1 tie


# --- online feedback from a deployed application -----------------------------------------------------


def test_online_feedback_logs_responses_and_takes_thumbs_ratings_and_choices(app):
    one = app.post("/api/online/responses", "shop", {"prompt": "hi", "responses": ["hello"], "key": "chat-1"}).json()["item_id"]
    again = app.post("/api/online/responses", "shop", {"prompt": "hi", "responses": ["hello"], "key": "chat-1"}).json()["item_id"]
    assert one == again  # the application's key makes logging idempotent
    two = app.post("/api/online/responses", "shop", {"prompt": "hi", "responses": ["a", "b"]}).json()["item_id"]
    assert app.post("/api/online/feedback", "shop", {"item_id": one, "thumb": -1}).json()["saved"]
    assert app.post("/api/online/feedback", "shop", {"item_id": two, "choice": 1}).json()["saved"]
    assert app.post("/api/online/feedback", "shop", {"item_id": two, "choice": 1}).json()["duplicate"]
    assert app.post("/api/online/feedback", "shop", {"item_id": two, "choice": 0}).status_code == 409
    bad = [
        ({"item_id": one, "choice": 0}, "two responses"), ({"item_id": two, "thumb": 1}, "one response"),
        ({"item_id": one, "thumb": 2}, "1 (up) or -1"), ({"item_id": one, "rating": 9}, "1 to 7"),
        ({"item_id": one}, "exactly one of"), ({"item_id": 12345, "thumb": 1}, "no logged response"),
    ]
    for body, reason in bad:
        response = app.post("/api/online/feedback", "shop", body)
        assert response.status_code in (404, 422) and reason in response.json()["error"], body
    assert app.post("/api/online/responses", "shop", {"prompt": "p", "responses": []}).status_code == 422
    labels = {l.item_id: l for l in app.store.labels("c")}
    assert labels[one].thumb == -1 and labels[two].ranking == [1, 0]
    # Online items are not offered to labellers and are counted apart.
    assert app.next("ann") is None
    status = app.get("/api/status", "admin").json()
    assert status["online_items"] == 2
    assert status["online"] == {"items": 2, "with_feedback": 2, "thumbs": 1, "thumbs_up_share": 0.0, "ratings": 0,
                                "mean_rating": None, "choices": 1}


def test_store_survives_reopening_and_keeps_only_token_hashes(tmp_path):
    store = LabelStore(tmp_path / "l.db")
    Campaign(store, "c", CampaignSettings(redundancy=3))
    token = store.add_labeller("c", "ann")
    (item_id,) = store.add_items("c", "b", [{"prompt": "p", "responses": ["x", "y"]}])
    store.submit(store.labeller("c", "ann"), Label(item_id, store.labeller("c", "ann").id, ranking=[0, 1]))
    store.close()
    reopened = LabelStore(tmp_path / "l.db")
    assert Campaign(reopened, "c").settings.redundancy == 3
    assert reopened.labeller_for_token(token).name == "ann"
    assert reopened.count_labels("c") == 1
    assert token.encode() not in (tmp_path / "l.db").read_bytes()
    with pytest.raises(ValueError, match="already has a labeller"):
        reopened.add_labeller("c", "ann")
    with pytest.raises(ValueError, match="role"):
        reopened.add_labeller("c", "zed", "boss")
    assert json.loads(json.dumps(reopened.campaign_settings("c")))["redundancy"] == 3


def test_online_feedback_becomes_records_once_for_the_next_round(app):
    def log(prompt, responses):
        return app.post("/api/online/responses", "shop", {"prompt": prompt, "responses": responses}).json()["item_id"]

    pair = log("hi", ["a", "b"])
    up, down, also_up = log("q", ["good answer"]), log("q", ["bad answer"]), log("q", ["fine answer"])
    rated_low, rated_high = log("r", ["meh"]), log("r", ["great"])
    log("unanswered", ["x"])
    app.post("/api/online/feedback", "shop", {"item_id": pair, "choice": 1})
    for item_id, thumb in ((up, 1), (down, -1), (also_up, 1)):
        app.post("/api/online/feedback", "shop", {"item_id": item_id, "thumb": thumb})
    app.post("/api/online/feedback", "shop", {"item_id": rated_low, "rating": 2})
    app.post("/api/online/feedback", "shop", {"item_id": rated_high, "rating": 6})
    records = app.campaign.online_records("train-round2")
    got = sorted((r.prompt, r.responses, r.ranking, r.annotator) for r in records)
    assert got == sorted([
        ("hi", ["a", "b"], [1, 0], "online:choice"),
        # thumbs on one prompt: up beats down twice; the two ups tie and give no record
        ("q", ["good answer", "bad answer"], [0, 1], "online:thumb"),
        ("q", ["fine answer", "bad answer"], [0, 1], "online:thumb"),
        ("r", ["great", "meh"], [0, 1], "online:rating"),
    ])
    assert len(app.campaign.online_records("train-round2")) == 4  # a restarted round gets the same ones
    assert app.campaign.online_records("train-round3") == []  # ... and the next round none of them again
    late = log("late", ["x", "y"])
    app.post("/api/online/feedback", "shop", {"item_id": late, "choice": 0})
    assert [r.prompt for r in app.campaign.online_records("train-round3")] == ["late"]


# --- a hostile labeller ---------------------------------------------------------------------------


def test_a_label_is_stored_only_for_the_item_handed_to_that_labeller(app):
    """Item ids are small integers: a crowd labeller who posts ids of their choosing (an item leased to
    someone else, one never handed out, one already at its redundancy) stores nothing."""
    app.campaign.settings.redundancy = 1
    ids = add(app, n=4)
    anns, bobs = app.next("ann"), app.next("bob")
    assert anns["id"] != bobs["id"]
    for foreign in (bobs["id"], *[i for i in ids if i not in (anns["id"], bobs["id"])], 10**6):
        response = app.post("/api/labels", "ann", {"item_id": foreign, "ranking": [0, 1]})
        assert response.status_code in (403, 404), response.text
    assert app.store.count_labels("c") == 0
    assert app.post("/api/labels", "ann", {"item_id": anns["id"], "ranking": [0, 1]}).status_code == 200
    # Bob's item is answered by Bob; Ann, now done with hers, cannot add a second answer past its redundancy.
    assert app.post("/api/labels", "bob", {"item_id": bobs["id"], "ranking": [1, 0]}).status_code == 200
    over = app.post("/api/labels", "ann", {"item_id": bobs["id"], "ranking": [0, 1]})
    assert over.status_code == 403 and "was not handed to 'ann'" in over.json()["error"]
    assert sorted((label.item_id, label.labeller_id) for label in app.store.labels("c")) == sorted(
        [(anns["id"], app.store.labeller("c", "ann").id), (bobs["id"], app.store.labeller("c", "bob").id)])
    exported = {record.prompt for record in app.campaign.export().records}
    assert len(exported) == 2


def test_a_late_answer_counts_while_the_item_wants_answers_and_not_after(app, monkeypatch):
    import rlhf_lab.labelling.campaign as campaign_module

    app.campaign.settings.redundancy = 1
    (item_id, _) = add(app, n=2)
    assert app.next("ann")["id"] == item_id
    clock = [campaign_module.time.monotonic()]
    monkeypatch.setattr(campaign_module.time, "monotonic", lambda: clock[0])
    clock[0] += campaign_module.LEASE_SECONDS + 1  # Ann reads for longer than her lease
    assert app.next("bob")["id"] == item_id  # the lease ran out: the item is Bob's now
    assert app.post("/api/labels", "bob", {"item_id": item_id, "ranking": [0, 1]}).status_code == 200
    late = app.post("/api/labels", "ann", {"item_id": item_id, "ranking": [1, 0]})
    assert late.status_code == 403 and "ran out" in late.json()["error"]
    assert app.store.count_labels("c") == 1


def test_a_load_of_labellers_posting_foreign_ids_stores_nothing_outside_their_leases(tmp_path):
    """Twenty crowd labellers each take items and answer them, and each also posts every other item id
    in the campaign: every stored label is of an item handed to its labeller, and none is beyond an
    item's redundancy."""
    import random

    store = LabelStore(tmp_path / "labels.db")
    campaign = Campaign(store, "c", CampaignSettings(redundancy=2))
    tokens = {f"l{i}": store.add_labeller("c", f"l{i}", "crowd") for i in range(20)}
    client = TestClient(create_app(campaign, {"http://testserver"}))
    ids = store.add_items("c", "b", [{"prompt": f"p{i}", "responses": ["x", "y"]} for i in range(30)])
    handed: dict[str, set] = {name: set() for name in tokens}
    rng = random.Random(0)
    for _ in range(6):
        for name, token in tokens.items():
            headers = {"Authorization": f"Bearer {token}"}
            item = client.get("/api/next", headers=headers).json()["item"]
            if item is not None:
                handed[name].add(item["id"])
                assert client.post("/api/labels", headers=headers, json={"item_id": item["id"], "ranking": [1, 0]}).status_code == 200
            for foreign in rng.sample(ids, 8):
                assert client.post("/api/labels", headers=headers, json={"item_id": foreign, "ranking": [0, 1]}).status_code in (403, 409)
    by_id = {store.labeller("c", name).id: name for name in tokens}
    labels = store.labels("c")
    assert labels and all(label.item_id in handed[by_id[label.labeller_id]] for label in labels)
    per_item: dict[int, int] = {}
    for label in labels:
        per_item[label.item_id] = per_item.get(label.item_id, 0) + 1
    assert max(per_item.values()) <= 2


def test_the_origins_of_a_served_app_are_its_own_addresses_and_the_public_url():
    from rlhf_lab.labelling.server import served_origins

    assert served_origins("127.0.0.1", 8765) == {"http://127.0.0.1:8765", "http://localhost:8765", "http://[::1]:8765"}
    public = served_origins("10.1.2.3", 80, "https://label.example.org/")
    assert public == {"http://10.1.2.3", "https://label.example.org"}  # as browsers write them: no default port
    # behind a proxy, under a path and on a port: the Origin a browser sends has neither the path nor a default port
    assert "https://Label.example.org:8443" not in served_origins("10.1.2.3", 8765, "https://Label.example.org:8443/labels/")
    assert "https://label.example.org:8443" in served_origins("10.1.2.3", 8765, "https://Label.example.org:8443/labels/")
    assert "https://label.example.org" in served_origins("10.1.2.3", 8765, "https://label.example.org:443/labels")
    everywhere = served_origins("0.0.0.0", 9000)
    assert "http://localhost:9000" in everywhere and "http://evil.example:9000" not in everywhere


def test_the_documented_labeller_api_is_what_the_server_answers(app):
    """docs/labelling.md's worked example: the same fields, the same answers."""
    from pathlib import Path

    docs = (Path(__file__).parent.parent / "docs" / "labelling.md").read_text()
    documented = {line.split()[1]: json.loads(line.split("->", 1)[1])
                  for line in docs.splitlines() if line.strip().startswith(("GET  /api/me", "POST /api/labels"))}
    add(app, n=1)
    me = app.get("/api/me", "ann").json()
    assert set(me) == set(documented["/api/me"]) and me["role"] == "crowd"
    item = app.next("ann")
    assert set(item) == {"id", "prompt", "responses", "rating"} and set(item["responses"][0]) == {"index", "text"}
    saved = app.post("/api/labels", "ann", {"item_id": item["id"], "ranking": [r["index"] for r in item["responses"]], "seconds": 12.5})
    assert saved.json() == documented["/api/labels"]
    for status in (401, 403, 404, 409, 422):
        assert str(status) in docs
