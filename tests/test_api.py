"""HTTP API: validation, idempotency, all-or-nothing, tenants, blocks, deletion, read-your-writes."""

from __future__ import annotations

CATALOG = {"items": [
    {"item_id": f"c{k}", "title": f"Comedy {k}", "categories": ["Comedy"], "attributes": {"creator": "ann"}} for k in range(5)
] + [
    {"item_id": f"d{k}", "title": f"Drama {k}", "categories": ["Drama"], "attributes": {"creator": "bob"}} for k in range(5)
]}


def seed(client, app: str | None = None):
    headers = {"X-Liverec-App": app} if app else {}
    assert client.post("/v1/items", json=CATALOG, headers=headers).status_code == 200
    events = []
    for u in range(6):  # everyone watches c0 then c1 ..., and d0 then d1
        for k, item in enumerate(["c0", "c1", "c2", "d0", "d1", "d2", "c3", "d3"]):
            events.append({"user_id": f"u{u}", "item_id": item, "type": "view", "timestamp": 1000 + 10 * k + u, "event_id": f"s{u}-{k}"})
    r = client.post("/v1/events", json={"events": events}, headers=headers)
    assert r.json() == {"accepted": len(events), "duplicates": 0}


def rec_ids(client, user: str, app: str | None = None, **params) -> list[str]:
    headers = {"X-Liverec-App": app} if app else {}
    r = client.get(f"/v1/users/{user}/recommendations", params={"n": 10, **params}, headers=headers)
    assert r.status_code == 200, r.text
    return [i["item_id"] for i in r.json()["items"]]


def test_single_event_and_batch_counts(client):
    assert client.post("/v1/events", json={"user_id": "u", "item_id": "i", "type": "view"}).json() == {"accepted": 1, "duplicates": 0}
    body = {"events": [{"user_id": "u", "item_id": "i", "type": "click", "event_id": "x"}] * 3}
    assert client.post("/v1/events", json=body).json() == {"accepted": 1, "duplicates": 2}


def test_idempotency_across_requests(client):
    event = {"user_id": "u", "item_id": "i", "type": "like", "event_id": "e-1"}
    assert client.post("/v1/events", json=event).json()["accepted"] == 1
    assert client.post("/v1/events", json=event).json() == {"accepted": 0, "duplicates": 1}
    assert client.get("/v1/users/u").json()["n_events"] == 1


def test_rejected_batch_stores_nothing(client):
    body = {"events": [
        {"user_id": "u", "item_id": "i", "type": "view", "event_id": "ok-1"},
        {"user_id": "u", "item_id": "i", "type": "rating", "value": 11},
    ]}
    r = client.post("/v1/events", json=body)
    assert r.status_code == 422
    assert r.json()["errors"] == [{"field": "events[1].value", "value": 11, "expected": "a rating between 0 and 5"}]
    assert client.get("/v1/users/u").status_code == 404
    # the valid event alone is accepted afterwards: nothing of the rejected batch was kept
    assert client.post("/v1/events", json=body["events"][0]).json()["accepted"] == 1


def test_bad_input_is_4xx_with_field_errors(client):
    r = client.post("/v1/events", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "body"
    r = client.post("/v1/events", json=[1, 2])
    assert r.status_code == 422
    r = client.post("/v1/events", json={"user_id": "u", "item_id": "i", "type": "view", "timestamp": "soon"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "timestamp"
    r = client.post("/v1/events", json={"events": "nope"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "events"
    r = client.get("/v1/users/u/recommendations", params={"n": "many"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "n"
    r = client.get("/v1/health", headers={"X-Liverec-App": "bad app!"})
    assert r.status_code == 200  # health is not tenant-scoped
    r = client.get("/v1/users/u/recommendations", headers={"X-Liverec-App": "bad app!"})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "X-Liverec-App"


def test_oversized_batch(tmp_path):
    from fastapi.testclient import TestClient

    from liverec.api.app import create_app
    from liverec.config import Settings

    with TestClient(create_app(Settings(data_dir=tmp_path, max_batch=3))) as c:
        r = c.post("/v1/events", json={"events": [{"user_id": "u", "item_id": "i", "type": "view"}] * 4})
        assert r.status_code == 413
        assert r.json()["errors"][0] == {"field": "events", "value": 4, "expected": "at most 3 events per request"}


def test_item_validation(client):
    r = client.post("/v1/items", json={"items": [{"item_id": "a", "categories": "Comedy"}]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "items[0].categories"
    r = client.put("/v1/items/a", json={"item_id": "b"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "item_id"
    assert client.put("/v1/items/a", json={"title": "A", "categories": ["X"]}).status_code == 200
    assert client.get("/v1/items/a").json()["categories"] == ["X"]


def test_recommendations_follow_co_occurrence(client):
    seed(client)
    client.post("/v1/events", json={"user_id": "new", "item_id": "c0", "type": "view"})
    recs = rec_ids(client, "new")
    assert recs[0] == "c1"  # what follows c0 for everyone
    assert "c0" not in recs  # consumed items are not recommended ...
    assert "c0" in rec_ids(client, "new", include_consumed=True)  # ... unless asked


def test_unknown_user_gets_popular_items_and_no_state(client):
    seed(client)
    assert len(rec_ids(client, "stranger")) == 8
    assert client.get("/v1/users/stranger").status_code == 404


def test_block_item_and_category_honoured_on_next_request(client):
    seed(client)
    client.post("/v1/events", json={"user_id": "v", "item_id": "c0", "type": "view"})
    assert "c1" in rec_ids(client, "v")
    client.post("/v1/events", json={"user_id": "v", "item_id": "c1", "type": "block"})
    assert "c1" not in rec_ids(client, "v")
    client.post("/v1/events", json={"user_id": "v", "type": "block", "scope": "category", "target": "Drama"})
    assert not [i for i in rec_ids(client, "v") if i.startswith("d")]
    client.post("/v1/events", json={"user_id": "v", "type": "block", "scope": "creator", "target": "ann"})
    assert rec_ids(client, "v") == []
    client.post("/v1/events", json={"user_id": "v", "type": "unblock", "scope": "category", "target": "Drama"})
    assert rec_ids(client, "v") and all(i.startswith("d") for i in rec_ids(client, "v"))


def test_exclude_and_category_filters(client):
    seed(client)
    assert set(rec_ids(client, "x", category="Drama")) == {"d0", "d1", "d2", "d3"}
    assert "c0" not in rec_ids(client, "x", exclude="c0,c1")
    assert "c1" not in rec_ids(client, "x", exclude=["c0", "c1"])


def test_read_your_writes_sequence(client):
    seed(client)
    client.post("/v1/events", json={"user_id": "w", "item_id": "d0", "type": "like"})
    history = client.get("/v1/users/w").json()["history"]
    assert history[0]["item_id"] == "d0" and history[0]["type"] == "like"
    assert rec_ids(client, "w")[0] == "d1"


def test_undo_reverts_a_block(client):
    seed(client)
    client.post("/v1/events", json={"user_id": "y", "item_id": "c2", "type": "block", "event_id": "blk"})
    assert "c2" not in rec_ids(client, "y")
    client.post("/v1/events", json={"user_id": "y", "type": "undo", "target": "blk"})
    assert "c2" in rec_ids(client, "y")


def test_tenant_isolation(client):
    seed(client, app="shop")
    client.post("/v1/events", json={"user_id": "z", "item_id": "c0", "type": "view"}, headers={"X-Liverec-App": "shop"})
    assert client.get("/v1/users/z").status_code == 404
    assert client.get("/v1/users/z", headers={"X-Liverec-App": "shop"}).status_code == 200
    assert rec_ids(client, "z") == []  # the default app has no items or events
    assert client.get("/v1/items/c0").status_code == 404
    assert rec_ids(client, "z", app="shop")


def test_delete_user(client):
    seed(client)
    receipt = client.delete("/v1/users/u0").json()
    assert receipt["events_deleted"] == 8 and receipt["state_deleted"] is True
    assert client.get("/v1/users/u0").status_code == 404
    again = client.delete("/v1/users/u0").json()
    assert again["events_deleted"] == 0 and again["state_deleted"] is False


def test_similar_items(client):
    seed(client)
    similar = client.get("/v1/items/c0/similar", params={"n": 3}).json()["items"]
    assert similar[0]["item_id"] == "c1" and "c0" not in [s["item_id"] for s in similar]


def test_health_and_metrics(client):
    assert client.get("/v1/health").json()["status"] == "ok"
    client.post("/v1/events", json={"user_id": "u", "item_id": "i", "type": "view"})
    text = client.get("/metrics").text
    assert "liverec_events_accepted 1.0" in text
    assert 'liverec_http_request_seconds_bucket{le="0.005",method="POST",route="/v1/events"}' in text
    import gc
    gc.collect(2)  # a full pass, timed by the process's monitor
    passes = {line.split()[0]: float(line.split()[1]) for line in client.get("/metrics").text.splitlines()
              if line.startswith(("liverec_gc_passes_total", "liverec_gc_pause_seconds_total"))}
    assert passes['liverec_gc_passes_total{generation="2"}'] >= 1 and passes['liverec_gc_pause_seconds_total{generation="2"}'] > 0
    client.app.state.heap.trim()  # what the trimming thread does every heap_trim_s
    heap = {line.split()[0]: float(line.split()[1]) for line in client.get("/metrics").text.splitlines()
            if line.startswith("liverec_heap_trim_")}
    assert heap["liverec_heap_trim_passes_total"] >= 1 and "liverec_heap_trim_returned_bytes_total" in heap
    assert client.get("/docs").status_code == 200
    assert "/v1/events" in client.get("/openapi.json").json()["paths"]


def test_non_finite_rating_literals_are_rejected(client):
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        body = b'{"user_id": "u", "item_id": "i", "type": "rating", "value": ' + literal + b"}"
        r = client.post("/v1/events", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, literal
        assert r.json()["errors"][0]["field"] == "value"
    assert client.get("/v1/users/u").status_code == 404


def test_openapi_defines_every_body_and_error(client):
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    refs = set()

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.add(node["$ref"].rsplit("/", 1)[-1])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs <= set(schemas), refs - set(schemas)  # nothing referenced that is not defined
    assert {"EventIn", "EventBatchIn", "ItemIn", "ItemBatchIn", "ErrorResponse"} <= refs
    assert "HTTPValidationError" not in schemas
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            assert "$ref" in str(op["responses"]["200"]["content"]["application/json"]["schema"]), (method, path)
            for status, response in op["responses"].items():
                if status != "200":
                    assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    events = doc["paths"]["/v1/events"]["post"]
    assert set(events["responses"]) == {"200", "400", "401", "403", "413", "422", "429", "503"}  # 503: the store is unreachable
    header = next(p for p in events["parameters"] if p["in"] == "header")
    assert header["schema"]["pattern"] == "^[A-Za-z0-9_.-]{1,64}$" and header["schema"]["minLength"] == 1


def test_errors_have_one_shape(client):
    for r in (
        client.post("/v1/events", json={"user_id": "u", "type": "view"}),
        client.get("/v1/users/u/recommendations", params={"n": 0}),
        client.get("/v1/users/nobody"),
        client.get("/v1/users/u", headers={"X-Liverec-App": ""}),  # an empty app id is malformed
        client.request("TRACE", "/v1/events"),
    ):
        body = r.json()
        assert set(body) == {"detail", "errors"} and isinstance(body["detail"], str), body
        assert all(set(e) == {"field", "value", "expected"} for e in body["errors"])
    assert client.get("/v1/users/u", headers={"X-Liverec-App": ""}).status_code == 400


def test_method_not_allowed_says_what_is(client):
    for path, allowed in (("/v1/users/u", "DELETE, GET"), ("/v1/items/a", "GET, PUT"), ("/v1/events", "POST"),
                          ("/v1/users/u/recommendations", "GET"), ("/v1/items/a/similar", "GET")):
        r = client.request("TRACE", path)
        assert r.status_code == 405 and r.headers["allow"] == allowed, (path, r.headers.get("allow"))


def test_ids_with_slashes_are_addressable(client):
    assert client.put("/v1/items/a%2Fb", json={"title": "AB"}).status_code == 200
    assert client.get("/v1/items/a%2Fb").json()["item_id"] == "a/b"
    assert client.get("/v1/items/a%2Fb/similar").json()["item_id"] == "a/b"
    client.post("/v1/events", json={"user_id": "u/1", "item_id": "a/b", "type": "view"})
    assert client.get("/v1/users/u%2F1").json()["n_events"] == 1
    assert client.get("/v1/users/u%2F1/recommendations").json()["user_id"] == "u/1"
    assert client.delete("/v1/users/u%2F1").json()["events_deleted"] == 1


def test_batches_take_nothing_beside_their_list(client):
    r = client.post("/v1/items", json={"items": [], "extra": 1})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "extra"


def test_deleted_user_is_a_new_visitor(client):
    """After deletion the user's recommendations are what a never-seen user gets: nothing of theirs
    (history, feedback, blocks, last slates) shapes them."""
    seed(client)
    client.post("/v1/events", json={"user_id": "gone", "item_id": "c0", "type": "like"})
    client.post("/v1/events", json={"user_id": "gone", "type": "block", "scope": "category", "target": "Drama"})
    client.post("/v1/events", json={"user_id": "gone", "item_id": "c1", "type": "skip"})
    mine = client.get("/v1/users/gone/recommendations", params={"explore": False}).json()
    assert mine["items"] and not [i for i in mine["items"] if i["item_id"].startswith("d")]
    assert client.delete("/v1/users/gone").json()["events_deleted"] == 3
    assert client.get("/v1/users/gone").status_code == 404

    def strip(body):
        return [(i["item_id"], i["score"], i["because"]) for i in body["items"]]

    after = client.get("/v1/users/gone/recommendations", params={"explore": False}).json()
    stranger = client.get("/v1/users/never-seen/recommendations", params={"explore": False}).json()
    assert strip(after) == strip(stranger)
    assert all(i["because"] == [{"kind": "model", "reason": "popular"}] for i in after["items"])
