//! Groups larger than a page of members, read over HTTP: the members are written out page by
//! page from one snapshot, and the answer is the same document a small group gets.

use reqwest::blocking::Client;
use serde_json::{json, Value};

use crate::server::{call, databases, TestServer};

/// Creates `n` users through `/Bulk`; their ids.
fn users(s: &TestServer, client: &Client, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        let ops: Vec<Value> = chunk
            .iter()
            .map(|i| {
                json!({"method": "POST", "path": "/Users", "bulkId": format!("b{i}"),
                       "data": {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                                "userName": format!("member{i:05}@example.com"),
                                "displayName": format!("Member \"{i}\"")}})
            })
            .collect();
        let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
                          "Operations": ops});
        let r: Value = client
            .post(format!("{}/Bulk", s.base))
            .bearer_auth(&s.token)
            .header("content-type", "application/scim+json")
            .body(body.to_string())
            .send()
            .unwrap()
            .json()
            .unwrap();
        for op in r["Operations"].as_array().unwrap_or_else(|| panic!("{r}")) {
            assert_eq!(op["status"], "201", "{op}");
            let location = op["location"].as_str().unwrap();
            ids.push(location.rsplit('/').next().unwrap().to_string());
        }
    }
    ids
}

/// Creates a group with `members` (ids); its id, from `Location`.
fn create_group(s: &TestServer, name: &str, members: &[impl AsRef<str>]) -> String {
    let members: Vec<Value> = members
        .iter()
        .map(|m| json!({"value": m.as_ref()}))
        .collect();
    let (status, g, headers) = call(
        s,
        reqwest::Method::POST,
        "/Groups",
        Some(
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                    "displayName": name, "members": members}),
        ),
        &[("Prefer", "return=minimal")],
    );
    assert!(status == 201 || status == 204, "{status} {g}");
    let location = headers["location"].to_str().unwrap();
    location.rsplit('/').next().unwrap().to_string()
}

fn values(members: &Value) -> Vec<String> {
    let mut v: Vec<String> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn a_group_larger_than_a_page_of_members_reads_whole_and_consistent() {
    let client = Client::new();
    for db in databases() {
        let s = TestServer::start(&db);
        let mut ids = users(&s, &client, 2_500);
        let group = |name: &str, members: &[String]| create_group(&s, name, members);
        let small_id = group("small", &ids[..2]);
        let big_id = group("big", &ids[..500]);
        let path = format!("/Groups/{big_id}");
        for chunk in ids[500..].chunks(500) {
            let members: Vec<Value> = chunk.iter().map(|m| json!({"value": m})).collect();
            let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                               "Operations": [{"op": "add", "path": "members", "value": members}]});
            let (status, _, _) = call(&s, reqwest::Method::PATCH, &path, Some(patch), &[]);
            assert!(status == 200 || status == 204, "{status}");
        }
        ids.sort();

        // The whole group, with the headers of any resource answer.
        let r = client
            .get(format!("{}{path}", s.base))
            .bearer_auth(&s.token)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["content-type"], "application/scim+json");
        let etag = r.headers()["etag"].to_str().unwrap().to_string();
        let g: Value = r.json().unwrap();
        assert_eq!(g["id"], big_id.as_str(), "{}", db.name());
        assert_eq!(g["displayName"], "big");
        assert_eq!(g["meta"]["version"], etag.as_str());
        assert_eq!(g["meta"]["resourceType"], "Group");
        assert_eq!(
            values(&g["members"]),
            ids,
            "{}: every member once",
            db.name()
        );
        let first = &g["members"][0];
        assert_eq!(first["type"], "User");
        assert_eq!(
            first["$ref"],
            format!("{}/Users/{}", s.base, first["value"].as_str().unwrap()).as_str()
        );
        assert!(
            first.get("display").is_none(),
            "display is returned on request"
        );

        // Conditional GET on the streamed answer's version.
        let (status, _, _) = call(
            &s,
            reqwest::Method::GET,
            &path,
            None,
            &[("If-None-Match", &etag)],
        );
        assert_eq!(status, 304);

        // Projection applies to every member.
        let (_, g, _) = call(
            &s,
            reqwest::Method::GET,
            &format!("{path}?attributes=members.value,members.display"),
            None,
            &[],
        );
        assert_eq!(values(&g["members"]), ids);
        let m = g["members"].as_array().unwrap();
        assert!(
            m.iter().all(|m| m.as_object().unwrap().len() == 2),
            "{}",
            m[0]
        );
        assert!(m.iter().any(|m| m["display"] == "Member \"7\""));
        assert!(g.get("displayName").is_none());
        assert_eq!(g["id"], big_id.as_str());

        // Lists: a filtered page, and cursor pages whose probe row is not shown.
        let (_, list, _) = call(
            &s,
            reqwest::Method::GET,
            "/Groups?filter=displayName%20eq%20%22big%22",
            None,
            &[],
        );
        assert_eq!(
            (list["totalResults"].clone(), list["itemsPerPage"].clone()),
            (json!(1), json!(1))
        );
        assert_eq!(values(&list["Resources"][0]["members"]), ids);
        let (_, page, _) = call(
            &s,
            reqwest::Method::GET,
            "/Groups?count=1&cursor",
            None,
            &[],
        );
        let resources = page["Resources"].as_array().unwrap();
        assert_eq!(resources.len(), 1, "{}", db.name());
        assert_eq!(resources[0]["id"], small_id.as_str());
        assert_eq!(resources[0]["members"].as_array().map(Vec::len), Some(2));
        let next = page["nextCursor"].as_str().unwrap();
        let (_, page, _) = call(
            &s,
            reqwest::Method::GET,
            &format!("/Groups?count=1&cursor={next}"),
            None,
            &[],
        );
        assert_eq!(page["Resources"][0]["id"], big_id.as_str());
        assert_eq!(values(&page["Resources"][0]["members"]), ids);
        assert!(page.get("nextCursor").is_none());
        let (_, page, _) = call(
            &s,
            reqwest::Method::GET,
            "/Groups?startIndex=1&count=5",
            None,
            &[],
        );
        assert_eq!(page["itemsPerPage"], 2);
        assert_eq!(
            page["Resources"][1]["members"].as_array().map(Vec::len),
            Some(2_500)
        );

        // Across resource types (root `.search`) too.
        let search = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                            "filter": "displayName eq \"big\" or displayName eq \"Member \\\"1\\\"\""});
        let (status, found, _) = call(&s, reqwest::Method::POST, "/.search", Some(search), &[]);
        assert_eq!(status, 200, "{found}");
        assert_eq!(found["totalResults"], 2, "{}", db.name());
        assert_eq!(found["Resources"][0]["userName"], "member00001@example.com");
        assert_eq!(found["Resources"][1]["id"], big_id.as_str());
        assert_eq!(values(&found["Resources"][1]["members"]), ids);

        // A write whose answer asks for every member: read after the write, page by page,
        // at the version written.
        let rename = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                            "Operations": [{"op": "replace", "path": "displayName", "value": "bigger"}]});
        let before: i64 = etag
            .trim_start_matches("W/\"")
            .trim_end_matches('"')
            .parse()
            .unwrap();
        let (status, g, headers) = call(
            &s,
            reqwest::Method::PATCH,
            &path,
            Some(rename),
            &[("Prefer", "return=representation")],
        );
        assert_eq!(status, 200, "{}", db.name());
        assert_eq!(g["displayName"], "bigger");
        assert_eq!(values(&g["members"]), ids);
        let written = format!("W/\"{}\"", before + 1);
        assert_eq!(headers["etag"], written.as_str());
        assert_eq!(g["meta"]["version"], written.as_str());
        let replace = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                             "displayName": "big", "members": ids[..1].iter().map(|m| json!({"value": m})).collect::<Vec<_>>()});
        let (status, g, headers) = call(
            &s,
            reqwest::Method::PUT,
            &format!("{path}?attributes=members"),
            Some(replace),
            &[],
        );
        assert_eq!(status, 200, "{}", db.name());
        assert_eq!(values(&g["members"]), ids[..1].to_vec());
        assert_eq!(headers["etag"], format!("W/\"{}\"", before + 2).as_str());
        assert!(g.get("displayName").is_none());

        // Errors before the answer begins are ordinary SCIM errors.
        let (status, err, _) = call(&s, reqwest::Method::GET, "/Groups/no-such-group", None, &[]);
        assert_eq!(status, 404, "{err}");
        assert_eq!(err["status"], "404");
        let r = client
            .get(format!("{}{path}", s.base))
            .bearer_auth("not-a-token")
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let r = client
            .get(format!(
                "{}/Groups?filter=displayName%20zz%20%22x%22",
                s.base
            ))
            .bearer_auth(&s.token)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
    }
}

/// What `ops::stream_get` hands over: its pieces, with the body put together.
fn pieces_of(
    state: &scim_server::AppState,
    tenant: &str,
    id: &str,
    expected: Option<i64>,
) -> Result<(Vec<String>, Value), scim_core::ScimError> {
    use scim_server::ops::{stream_get, Piece};
    let params = scim_server::http::Params::from_json(&json!({})).unwrap();
    let (mut kinds, mut body) = (Vec::new(), Vec::new());
    stream_get(
        state,
        tenant,
        "Group",
        id,
        &params,
        expected,
        &mut |piece| {
            match piece {
                Piece::Head(v) => kinds.push(format!("head {v:?}")),
                Piece::Bytes(b) => body.extend(b),
                Piece::Last(b) => {
                    body.extend(b);
                    kinds.push("last".into());
                }
                Piece::Changed => kinds.push("changed".into()),
            }
            true
        },
    )?;
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok((kinds, body))
}

#[test]
fn the_answer_to_a_write_is_read_only_at_the_version_written() {
    for db in databases() {
        // A second application state on the server's database, to call the operation itself.
        let url = match &db {
            crate::server::Db::Postgres(base) => {
                scim_diesel::testing::fresh_postgres_schema(base).unwrap()
            }
            _ => String::new(),
        };
        let db = match url.is_empty() {
            true => db,
            false => crate::server::Db::Exact(url),
        };
        let s = TestServer::start(&db);
        let url = match &db {
            crate::server::Db::Exact(url) => url.clone(),
            _ => s.db_path.as_ref().unwrap().to_string_lossy().into_owned(),
        };
        let state = scim_server::AppState::open(scim_server::Config::with_database(url)).unwrap();
        let tenant = state.creds.default_tenant().unwrap().unwrap();
        let client = Client::new();
        let ids = users(&s, &client, 3);
        let members: Vec<Value> = ids.iter().map(|m| json!({"value": m})).collect();
        let (status, g, _) = call(
            &s,
            reqwest::Method::POST,
            "/Groups",
            Some(
                json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                        "displayName": "G", "members": members}),
            ),
            &[],
        );
        assert_eq!(status, 201);
        let id = g["id"].as_str().unwrap();
        // At the version written: the group, whole.
        let (kinds, body) = pieces_of(&state, &tenant, id, Some(1)).unwrap();
        assert_eq!(kinds, ["head Some(1)", "last"], "{}", db.name());
        assert_eq!(body["members"].as_array().map(Vec::len), Some(3));
        assert_eq!(body["meta"]["version"], "W/\"1\"");
        // Another write came first: nothing but `Changed` (the handler answers 204).
        let rename = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                            "Operations": [{"op": "replace", "path": "displayName", "value": "H"}]});
        let path = format!("/Groups/{id}");
        let (status, _, _) = call(&s, reqwest::Method::PATCH, &path, Some(rename), &[]);
        assert_eq!(status, 200);
        assert_eq!(
            pieces_of(&state, &tenant, id, Some(1)).unwrap().0,
            ["changed"]
        );
        // Deleted since: the same; a plain read of it is 404.
        let (status, _, _) = call(&s, reqwest::Method::DELETE, &path, None, &[]);
        assert_eq!(status, 204);
        assert_eq!(
            pieces_of(&state, &tenant, id, Some(2)).unwrap().0,
            ["changed"]
        );
        let err = pieces_of(&state, &tenant, id, None).unwrap_err();
        assert_eq!(err.status, 404, "{}", db.name());
    }
}

/// PATCHes the group `group` with one `op` (`add`, `remove`) of `members` naming `member`.
fn patch_member(s: &TestServer, group: &str, op: &str, member: &str) {
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                       "Operations": [{"op": op, "path": "members",
                                       "value": [{"value": member}]}]});
    let path = format!("/Groups/{group}");
    let (status, r, _) = call(s, reqwest::Method::PATCH, &path, Some(patch), &[]);
    assert!(status == 200 || status == 204, "{status} {r}");
}

/// A user's `groups` lists the groups it belongs to through nested groups too, as `indirect`
/// (RFC 7643 section 4.1.2), after its direct ones; a group it is also a direct member of is
/// listed once, as `direct`; a cycle of nested groups ends. Read every way a user is read.
#[test]
fn a_users_groups_include_those_reached_through_nested_groups() {
    let client = Client::new();
    for db in databases() {
        let s = TestServer::start(&db);
        let ids = users(&s, &client, 3);
        let (u1, u2) = (&ids[0], &ids[1]);
        let group = |name: &str, members: &[&String]| create_group(&s, name, members);
        let members = |group: &str, op: &str, member: &str| patch_member(&s, group, op, member);
        // u1 is a direct member of A and C; A is in B, B in C, C in D, D in E, E in B (a
        // cycle). u2 is only in F.
        let a = group("A", &[u1]);
        let b = group("B", &[&a]);
        let c = group("C", &[&b, u1]);
        let d = group("D", &[&c]);
        let e = group("E", &[&d]);
        members(&b, "add", &e);
        let f = group("F", &[u2]);
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        let (direct, indirect) = (sorted(vec![a.clone(), c.clone()]), sorted(vec![b, d, e]));
        // (value, type, display) of each listed group, in the order the answer has them.
        let listed = |user: &Value| -> Vec<(String, String, String)> {
            user["groups"]
                .as_array()
                .unwrap_or_else(|| panic!("{}: no groups in {user}", db.name()))
                .iter()
                .map(|g| {
                    let text = |k: &str| g[k].as_str().unwrap_or_default().to_string();
                    (text("value"), text("type"), text("display"))
                })
                .collect()
        };
        let expect = |direct: &[String], indirect: &[String]| -> Vec<(String, String)> {
            let mut v: Vec<(String, String)> = direct
                .iter()
                .map(|g| (g.clone(), "direct".into()))
                .collect();
            v.extend(indirect.iter().map(|g| (g.clone(), "indirect".into())));
            v
        };
        let kinds = |user: &Value| -> Vec<(String, String)> {
            listed(user).into_iter().map(|(v, t, _)| (v, t)).collect()
        };
        let want = expect(&direct, &indirect);

        // GET by id (twice: PostgreSQL's batched point reads and the general path).
        for attrs in ["", "?attributes=groups"] {
            let (status, r, _) = call(
                &s,
                reqwest::Method::GET,
                &format!("/Users/{u1}{attrs}"),
                None,
                &[],
            );
            assert_eq!(status, 200, "{r}");
            assert_eq!(kinds(&r), want, "{}: GET /Users/id{attrs}", db.name());
        }
        // Display names of indirect groups are read like those of direct ones.
        let names: Vec<String> = listed(
            &call(
                &s,
                reqwest::Method::GET,
                &format!("/Users/{u1}?attributes=groups.display,groups.type"),
                None,
                &[],
            )
            .1,
        )
        .into_iter()
        .map(|(_, _, d)| d)
        .collect();
        assert_eq!(names.len(), 5, "{}: {names:?}", db.name());
        assert!(names.iter().all(|n| !n.is_empty()), "{names:?}");
        // A lookup by userName, and a page of every user.
        let (_, r, _) = call(
            &s,
            reqwest::Method::GET,
            "/Users?filter=userName%20eq%20%22member00000@example.com%22",
            None,
            &[],
        );
        assert_eq!(
            kinds(&r["Resources"][0]),
            want,
            "{}: userName eq",
            db.name()
        );
        let (_, page, _) = call(&s, reqwest::Method::GET, "/Users?count=10", None, &[]);
        let of = |id: &str| {
            page["Resources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["id"] == id)
                .cloned()
                .unwrap()
        };
        assert_eq!(kinds(&of(u1)), want, "{}: a page of users", db.name());
        assert_eq!(
            kinds(&of(u2)),
            expect(std::slice::from_ref(&f), &[]),
            "{}",
            db.name()
        );
        assert!(of(&ids[2]).get("groups").is_none(), "{}", db.name());
        // The answer to a PATCH of the user.
        let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                           "Operations": [{"op": "replace", "path": "displayName",
                                           "value": "Renamed"}]});
        let (status, r, _) = call(
            &s,
            reqwest::Method::PATCH,
            &format!("/Users/{u1}"),
            Some(patch),
            &[],
        );
        assert_eq!(status, 200, "{r}");
        assert_eq!(kinds(&r), want, "{}: PATCH answer", db.name());

        // Taking E out of B and A out of B breaks the paths to B: u1 keeps D and E through C.
        members(&indirect[0], "remove", &indirect[2]);
        let want_b_out = |u: &Value| {
            let mut left = kinds(u);
            left.retain(|(_, t)| t == "indirect");
            left.len()
        };
        let (_, r, _) = call(&s, reqwest::Method::GET, &format!("/Users/{u1}"), None, &[]);
        assert_eq!(
            want_b_out(&r),
            3,
            "{}: B is still reached through A",
            db.name()
        );
        members(&indirect[0], "remove", &a);
        let (_, r, _) = call(&s, reqwest::Method::GET, &format!("/Users/{u1}"), None, &[]);
        let left: Vec<String> = kinds(&r)
            .into_iter()
            .filter(|(_, t)| t == "indirect")
            .map(|(v, _)| v)
            .collect();
        assert_eq!(
            left,
            sorted(vec![indirect[1].clone(), indirect[2].clone()]),
            "{}: D and E through C",
            db.name()
        );
    }
}

/// Filters on a user's `groups` see what a read of the user lists: the groups it is in
/// directly and those it reaches through nested groups, each link typed `direct` or
/// `indirect`, with the tests in one value filter applied to the same link. A cycle of groups
/// ends, and a removal of a nested group is seen at once.
#[test]
fn filters_on_groups_follow_nested_groups() {
    let client = Client::new();
    for db in databases() {
        let s = TestServer::start(&db);
        let ids = users(&s, &client, 4);
        let name = |i: usize| format!("member{i:05}@example.com");
        let (u1, u2, u3) = (&ids[0], &ids[1], &ids[2]);
        // A holds u1; B holds A and u2; C holds B and D; D holds C (a cycle) and u3. The
        // fourth user is in no group.
        let a = create_group(&s, "A", &[u1]);
        let b = create_group(&s, "B", &[&a, u2]);
        let c = create_group(&s, "C", &[&b]);
        let d = create_group(&s, "D", &[&c, u3]);
        let patch = |group: &str, op: &str, member: &str| patch_member(&s, group, op, member);
        patch(&c, "add", &d);
        // The users a filter matches, by their index in `ids`.
        let matched = |filter: &str| -> Vec<usize> {
            let path = format!(
                "/Users?attributes=userName&count=100&filter={}",
                filter.replace(' ', "%20").replace('"', "%22")
            );
            let (status, r, _) = call(&s, reqwest::Method::GET, &path, None, &[]);
            assert_eq!(status, 200, "{}: {filter}: {r}", db.name());
            let mut found: Vec<usize> = r["Resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| (0..4).find(|i| u["userName"] == name(*i)).unwrap())
                .collect();
            found.sort();
            assert_eq!(r["totalResults"], found.len(), "{filter}");
            found
        };
        let cases: Vec<(String, Vec<usize>)> = vec![
            (format!("groups eq \"{a}\""), vec![0]),
            (format!("groups eq \"{c}\""), vec![0, 1, 2]),
            (format!("groups.value eq \"{b}\""), vec![0, 1]),
            ("groups.display eq \"c\"".into(), vec![0, 1, 2]),
            ("groups.display eq \"D\"".into(), vec![0, 1, 2]),
            ("groups pr".into(), vec![0, 1, 2]),
            ("groups.type eq \"indirect\"".into(), vec![0, 1, 2]),
            ("groups.type eq \"Direct\"".into(), vec![0, 1, 2]),
            ("groups.type ne \"indirect\"".into(), vec![3]),
            ("groups.type eq \"other\"".into(), vec![]),
            (
                "groups[type eq \"direct\" and display eq \"D\"]".into(),
                vec![2],
            ),
            (
                "groups[type eq \"indirect\" and display eq \"D\"]".into(),
                vec![0, 1],
            ),
            (
                "groups[display eq \"D\" and not (type eq \"indirect\")]".into(),
                vec![2],
            ),
            (
                format!("groups[value eq \"{b}\" and type eq \"indirect\"]"),
                vec![0],
            ),
            (
                format!("groups[value eq \"{c}\" and type eq \"direct\"]"),
                vec![],
            ),
            (
                "groups[type eq \"direct\" and display eq \"B\"] or groups.display eq \"A\"".into(),
                vec![0, 1],
            ),
            (format!("not (groups eq \"{b}\")"), vec![2, 3]),
        ];
        for (filter, want) in &cases {
            assert_eq!(&matched(filter), want, "{}: {filter}", db.name());
        }
        // A out of B: u1 reaches neither B nor C nor D any more.
        patch(&b, "remove", &a);
        assert_eq!(
            matched(&format!("groups eq \"{c}\"")),
            vec![1, 2],
            "{}",
            db.name()
        );
        assert_eq!(
            matched("groups.type eq \"indirect\""),
            vec![1, 2],
            "{}",
            db.name()
        );
        // The user's own read agrees with the filters.
        let (_, r, _) = call(&s, reqwest::Method::GET, &format!("/Users/{u1}"), None, &[]);
        assert_eq!(r["groups"].as_array().map(Vec::len), Some(1), "{r}");
    }
}
