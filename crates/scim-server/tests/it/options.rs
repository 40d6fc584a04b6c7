//! Behaviour that depends on settings: each test starts a server configured for it.

use reqwest::blocking::Client;
use serde_json::{json, Value};

use crate::server::{call, databases, Db, TestServer};

fn user(name: &str, extra: Value) -> Value {
    let mut u =
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name});
    if let (Value::Object(u), Value::Object(e)) = (&mut u, extra) {
        u.extend(e);
    }
    u
}

#[test]
fn okta_reprovisioning_reactivates_an_inactive_user_when_enabled() {
    for db in databases() {
        let s = TestServer::start_with(&db, |c| c.reactivate_on_conflict = true);
        let post = reqwest::Method::POST;
        let (status, created, _) = call(
            &s,
            post.clone(),
            "/Users",
            Some(user(
                "okta.user@example.com",
                json!({"externalId": "00u1", "title": "Old"}),
            )),
            &[],
        );
        assert_eq!(status, 201);
        let id = created["id"].as_str().unwrap().to_string();
        // An active user: a real duplicate stays 409.
        let (status, body, _) = call(
            &s,
            post.clone(),
            "/Users",
            Some(user("OKTA.USER@example.com", json!({}))),
            &[],
        );
        assert_eq!(
            (status, body["scimType"].clone()),
            (409, json!("uniqueness")),
            "{}",
            db.name()
        );
        // Deactivate, then Okta re-assigns: same user, updated and active again.
        let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "value": {"active": false}}]});
        assert_eq!(
            call(
                &s,
                reqwest::Method::PATCH,
                &format!("/Users/{id}"),
                Some(patch),
                &[]
            )
            .0,
            200
        );
        let (status, again, headers) = call(
            &s,
            post,
            "/Users",
            Some(user(
                "okta.user@example.com",
                json!({"externalId": "00u2", "name": {"givenName": "New"}}),
            )),
            &[],
        );
        assert_eq!(status, 201, "{}: {again}", db.name());
        assert_eq!(
            again["id"],
            json!(id),
            "the existing user is adopted, not duplicated"
        );
        assert_eq!(again["active"], json!(true));
        assert_eq!(again["externalId"], json!("00u2"));
        assert!(
            again.get("title").is_none(),
            "the body replaces the old state"
        );
        assert_eq!(
            headers["location"].to_str().unwrap(),
            format!("{}/Users/{id}", s.base)
        );
        let (_, list, _) = call(&s, reqwest::Method::GET, "/Users", None, &[]);
        assert_eq!(list["totalResults"], json!(1));
    }
}

#[test]
fn user_delete_deactivate_keeps_the_user_inactive_and_its_groups() {
    use reqwest::Method;
    for db in databases() {
        let s = TestServer::start_with(&db, |c| {
            c.user_delete = scim_server::config::UserDelete::Deactivate;
            c.reactivate_on_conflict = true;
        });
        let (status, created, headers) = call(
            &s,
            Method::POST,
            "/Users",
            Some(user(
                "leaver@example.com",
                json!({"title": "Engineer", "active": true}),
            )),
            &[],
        );
        assert_eq!(status, 201);
        let id = created["id"].as_str().unwrap().to_string();
        let etag = headers["etag"].to_str().unwrap().to_string();
        let (status, group, _) = call(
            &s,
            Method::POST,
            "/Groups",
            Some(
                json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                "displayName": "Engineering", "members": [{"value": id}]}),
            ),
            &[],
        );
        assert_eq!(status, 201);
        let gid = group["id"].as_str().unwrap().to_string();
        let user_path = format!("/Users/{id}");

        // A stale If-Match is still refused, and changes nothing.
        let (status, body, _) = call(
            &s,
            Method::DELETE,
            &user_path,
            None,
            &[("if-match", "W/\"999\"")],
        );
        assert_eq!(status, 412, "{}: {body}", db.name());
        assert_eq!(
            call(&s, Method::GET, &user_path, None, &[]).1["active"],
            json!(true)
        );

        // DELETE answers 204, as the identity provider expects ...
        let (status, _, _) = call(&s, Method::DELETE, &user_path, None, &[("if-match", &etag)]);
        assert_eq!(status, 204, "{}", db.name());
        // ... and the user is kept, inactive, with a new version and its other attributes.
        let (status, kept, headers) = call(&s, Method::GET, &user_path, None, &[]);
        assert_eq!(status, 200, "{}", db.name());
        assert_eq!(kept["active"], json!(false));
        assert_eq!(kept["title"], json!("Engineer"));
        assert_ne!(headers["etag"].to_str().unwrap(), etag);
        assert_eq!(kept["groups"][0]["value"], json!(gid));
        let (_, found, _) = call(
            &s,
            Method::GET,
            "/Users?filter=active%20eq%20false",
            None,
            &[],
        );
        assert_eq!(found["totalResults"], json!(1), "{}: {found}", db.name());
        let (_, members, _) = call(&s, Method::GET, &format!("/Groups/{gid}"), None, &[]);
        assert_eq!(members["members"][0]["value"], json!(id));
        // A second DELETE of the same user is answered the same way.
        assert_eq!(call(&s, Method::DELETE, &user_path, None, &[]).0, 204);

        // An unknown user is still 404; a group is still deleted.
        assert_eq!(
            call(&s, Method::DELETE, "/Users/no-such-user", None, &[]).0,
            404
        );
        assert_eq!(
            call(&s, Method::DELETE, &format!("/Groups/{gid}"), None, &[]).0,
            204
        );
        assert_eq!(
            call(&s, Method::GET, &format!("/Groups/{gid}"), None, &[]).0,
            404
        );

        // Bulk DELETE follows the same setting.
        let (_, other, _) = call(
            &s,
            Method::POST,
            "/Users",
            Some(user("bulk@example.com", json!({}))),
            &[],
        );
        let other_id = other["id"].as_str().unwrap().to_string();
        let (status, bulk, _) = call(
            &s,
            Method::POST,
            "/Bulk",
            Some(
                json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
                "Operations": [{"method": "DELETE", "path": format!("/Users/{other_id}")}]}),
            ),
            &[],
        );
        assert_eq!(status, 200);
        assert_eq!(bulk["Operations"][0]["status"], json!("204"), "{bulk}");
        let (_, other, _) = call(&s, Method::GET, &format!("/Users/{other_id}"), None, &[]);
        assert_eq!(other["active"], json!(false));

        // The identity provider creates the user again later (JumpCloud's connection test, a
        // re-hire): with SCIM_REACTIVATE_ON_CONFLICT the kept user comes back, not a duplicate.
        let (status, again, _) = call(
            &s,
            Method::POST,
            "/Users",
            Some(user("leaver@example.com", json!({}))),
            &[],
        );
        assert_eq!(
            (status, again["id"].clone()),
            (201, json!(id)),
            "{}",
            db.name()
        );
        assert_eq!(again["active"], json!(true));
    }
}

#[test]
fn user_delete_deletes_by_default() {
    use reqwest::Method;
    let s = TestServer::start(&Db::Sqlite);
    let (_, created, _) = call(
        &s,
        Method::POST,
        "/Users",
        Some(user("gone@example.com", json!({}))),
        &[],
    );
    let path = format!("/Users/{}", created["id"].as_str().unwrap());
    assert_eq!(call(&s, Method::DELETE, &path, None, &[]).0, 204);
    assert_eq!(call(&s, Method::GET, &path, None, &[]).0, 404);
    assert_eq!(call(&s, Method::DELETE, &path, None, &[]).0, 404);
}

#[test]
fn reprovisioning_is_409_by_default() {
    let s = TestServer::start(&Db::Sqlite);
    let (_, created, _) = call(
        &s,
        reqwest::Method::POST,
        "/Users",
        Some(user("u", json!({"active": false}))),
        &[],
    );
    assert!(created["id"].is_string());
    let (status, _, _) = call(
        &s,
        reqwest::Method::POST,
        "/Users",
        Some(user("u", json!({}))),
        &[],
    );
    assert_eq!(status, 409);
}

#[test]
fn prefer_return_minimal_answers_204_with_the_new_etag() {
    let s = TestServer::start(&Db::Sqlite);
    let (_, created, _) = call(
        &s,
        reqwest::Method::POST,
        "/Groups",
        Some(
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "G"}),
        ),
        &[],
    );
    let id = created["id"].as_str().unwrap();
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "path": "displayName", "value": "H"}]});
    let (status, body, headers) = call(
        &s,
        reqwest::Method::PATCH,
        &format!("/Groups/{id}"),
        Some(patch),
        &[("Prefer", "return=minimal")],
    );
    assert_eq!((status, body), (204, Value::Null));
    assert_eq!(headers["etag"], "W/\"2\"");
    let (_, g, _) = call(
        &s,
        reqwest::Method::GET,
        &format!("/Groups/{id}"),
        None,
        &[],
    );
    assert_eq!(g["displayName"], json!("H"));
}

#[test]
fn patch_max_operations_is_enforced_before_any_work() {
    use reqwest::Method;
    let s = TestServer::start_with(&Db::Sqlite, |c| c.patch_max_operations = 3);
    let (_, u, _) = call(
        &s,
        Method::POST,
        "/Users",
        Some(user("ops@example.com", json!({"title": "t0"}))),
        &[],
    );
    let path = format!("/Users/{}", u["id"].as_str().unwrap());
    let ops = |n: usize| {
        json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": (0..n).map(|i| json!({"op": "replace", "path": "title", "value": format!("t{}", i + 1)})).collect::<Vec<_>>()})
    };
    let (status, done, _) = call(&s, Method::PATCH, &path, Some(ops(3)), &[]);
    assert_eq!((status, done["title"].clone()), (200, json!("t3")));
    let (status, err, _) = call(&s, Method::PATCH, &path, Some(ops(4)), &[]);
    assert_eq!(
        (status, err["status"].clone()),
        (413, json!("413")),
        "{err}"
    );
    assert!(
        err["detail"].as_str().unwrap().contains("at most 3"),
        "{err}"
    );
    // Through /Bulk too, and nothing was written.
    let bulk = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
        "Operations": [{"method": "PATCH", "path": path, "data": ops(4)}]});
    let (_, answer, _) = call(&s, Method::POST, "/Bulk", Some(bulk), &[]);
    assert_eq!(answer["Operations"][0]["status"], json!("413"), "{answer}");
    let (_, now, _) = call(&s, Method::GET, &path, None, &[]);
    assert_eq!(
        (now["title"].clone(), now["meta"]["version"].clone()),
        (json!("t3"), json!("W/\"2\""))
    );
}

#[test]
fn bulk_max_operations_is_enforced_and_advertised() {
    let s = TestServer::start_with(&Db::Sqlite, |c| c.bulk_max_operations = 2);
    let (_, spc, _) = call(
        &s,
        reqwest::Method::GET,
        "/ServiceProviderConfig",
        None,
        &[],
    );
    assert_eq!(
        spc["bulk"],
        json!({"supported": true, "maxOperations": 2, "maxPayloadSize": crate::server::TEST_MAX_BODY})
    );
    let op = json!({"method": "DELETE", "path": "/Users/x"});
    let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": [op, op, op]});
    let (status, err, _) = call(&s, reqwest::Method::POST, "/Bulk", Some(body), &[]);
    assert_eq!((status, err["status"].clone()), (413, json!("413")));
    let s = TestServer::start_with(&Db::Sqlite, |c| c.bulk_max_operations = 0);
    let (_, spc, _) = call(
        &s,
        reqwest::Method::GET,
        "/ServiceProviderConfig",
        None,
        &[],
    );
    assert_eq!(spc["bulk"]["supported"], json!(false));
    assert_eq!(
        call(&s, reqwest::Method::POST, "/Bulk", Some(json!({})), &[]).0,
        404
    );
}

#[test]
fn strict_mode_turns_every_leniency_off_and_keeps_rfc_behaviour() {
    let s = TestServer::start_with(&Db::Sqlite, |c| c.strict = true);
    let (post, patch, get) = (
        reqwest::Method::POST,
        reqwest::Method::PATCH,
        reqwest::Method::GET,
    );
    // RFC-conformant traffic works.
    let (status, u, _) = call(
        &s,
        post.clone(),
        "/Users",
        Some(user(
            "strict",
            json!({"emails": [{"value": "a@x", "primary": true}], "active": true}),
        )),
        &[],
    );
    assert_eq!(status, 201, "{u}");
    let id = u["id"].as_str().unwrap().to_string();
    let (_, g, _) = call(
        &s,
        post.clone(),
        "/Groups",
        Some(
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "G", "members": [{"value": id}]}),
        ),
        &[],
    );
    let gid = g["id"].as_str().unwrap().to_string();
    let ok_patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [
        {"op": "replace", "path": "active", "value": false},
        {"op": "replace", "value": {"displayName": "Strict", "name": {"givenName": "S"}}}]});
    assert_eq!(
        call(
            &s,
            patch.clone(),
            &format!("/Users/{id}"),
            Some(ok_patch),
            &[]
        )
        .0,
        200
    );
    assert_eq!(
        call(
            &s,
            get.clone(),
            "/Users?filter=userName%20eq%20%22strict%22",
            None,
            &[]
        )
        .0,
        200
    );

    let ops = |o: Value| json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": o});
    let user_path = format!("/Users/{id}");
    let group_path = format!("/Groups/{gid}");
    let cases: Vec<(reqwest::Method, &str, Value, &str)> = vec![
        (
            post.clone(),
            "/Users",
            user("b1", json!({"active": "True"})),
            "invalidValue",
        ),
        (
            post.clone(),
            "/Users",
            user("b2", json!({"emails": {"value": "x@y"}})),
            "invalidValue",
        ),
        (
            post.clone(),
            "/Users",
            user(
                "b3",
                json!({"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"manager": "271"}}),
            ),
            "invalidValue",
        ),
        (
            patch.clone(),
            &user_path,
            ops(json!([{"op": "Replace", "path": "title", "value": "x"}])),
            "invalidSyntax",
        ),
        (patch.clone(), &user_path, ops(json!([])), "invalidValue"),
        (
            patch.clone(),
            &user_path,
            ops(json!([{"op": "replace", "value": {"name.givenName": "x"}}])),
            "invalidPath",
        ),
        (
            patch.clone(),
            &user_path,
            ops(json!([{"op": "replace", "value": {"id": id, "title": "x"}}])),
            "mutability",
        ),
        (
            patch.clone(),
            &user_path,
            ops(json!([{"op": "replace", "value": {"meta": {"resourceType": "User"}}}])),
            "mutability",
        ),
        (
            patch.clone(),
            &user_path,
            ops(json!([{"op": "add", "path": "emails[type eq \"work\"].value", "value": "w@x"}])),
            "noTarget",
        ),
        (
            patch.clone(),
            &user_path,
            ops(
                json!([{"op": "remove", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager[value eq \"1\"]"}]),
            ),
            "invalidPath",
        ),
        (
            patch.clone(),
            &group_path,
            ops(json!([{"op": "remove", "path": "members", "value": [{"value": id}]}])),
            "invalidValue",
        ),
    ];
    for (method, path, body, want) in cases {
        let (status, err, _) = call(&s, method.clone(), path, Some(body.clone()), &[]);
        assert_eq!(
            (status, err["scimType"].as_str()),
            (400, Some(want)),
            "{method} {path} {body}: {err}"
        );
    }
    let (status, err, _) = call(&s, get, "/Users?filter=externalId%20eq%20jyoung", None, &[]);
    assert_eq!(
        (status, err["scimType"].as_str()),
        (400, Some("invalidFilter"))
    );
    // Nothing above changed the group.
    let (_, g, _) = call(&s, reqwest::Method::GET, &group_path, None, &[]);
    assert_eq!(g["members"].as_array().map(Vec::len), Some(1));
}

#[test]
fn jwt_bearer_tokens_from_the_configured_issuer_are_accepted() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let secret = b"0123456789abcdef0123456789abcdef";
    let s = TestServer::start_with(&Db::Sqlite, |c| {
        c.jwt = Some(scim_server::config::JwtSettings {
            key: scim_auth::jwt::JwtKey::Hs256(secret.to_vec()),
            issuer: Some("https://sts.windows.net/tenant/".into()),
            audience: Some("8adf8e6e-67b2-4cf2-a259-e3dc5476c621".into()),
        })
    });
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let sign = |key: &[u8], iss: &str| {
        let claims = json!({"iss": iss, "aud": "8adf8e6e-67b2-4cf2-a259-e3dc5476c621", "exp": exp, "sub": "entra"});
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(key),
        )
        .unwrap()
    };
    let get = |token: &str| {
        Client::new()
            .get(format!("{}/Users", s.base))
            .bearer_auth(token)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(get(&sign(secret, "https://sts.windows.net/tenant/")), 200);
    assert_eq!(
        get(&sign(
            b"another-secret-another-secret-00",
            "https://sts.windows.net/tenant/"
        )),
        401
    );
    assert_eq!(
        get(&sign(secret, "https://sts.windows.net/someone-else/")),
        401
    );
    // The opaque tokens keep working beside JWTs.
    assert_eq!(get(&s.token), 200);

    // Point reads: a JWT's tenant is resolved first, an opaque token is checked inside the
    // read's own statement. Both must give the same answers, groups included.
    let jwt = sign(secret, "https://sts.windows.net/tenant/");
    let post = |path: &str, body: serde_json::Value| -> serde_json::Value {
        let r = Client::new()
            .post(format!("{}{path}", s.base))
            .bearer_auth(&s.token)
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        r.json().unwrap()
    };
    let user = post(
        "/Users",
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "Jo"}),
    );
    let uid = user["id"].as_str().unwrap();
    post(
        "/Groups",
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
               "displayName": "Staff", "members": [{"value": uid}]}),
    );
    let read = |token: &str, path: &str| -> (u16, serde_json::Value) {
        let r = Client::new()
            .get(format!("{}{path}", s.base))
            .bearer_auth(token)
            .send()
            .unwrap();
        (r.status().as_u16(), r.json().unwrap_or_default())
    };
    for path in [
        format!("/Users/{uid}"),
        "/Users/no-such-id".to_string(),
        "/Users?filter=userName%20eq%20%22jo%22".to_string(),
        "/Users?filter=userName%20eq%20%22nobody%22".to_string(),
        format!("/Users?filter=id%20eq%20%22{uid}%22&attributes=userName"),
    ] {
        let (by_jwt, by_token) = (read(&jwt, &path), read(&s.token, &path));
        assert_eq!(by_jwt, by_token, "{path}");
    }
    let (status, body) = read(&jwt, &format!("/Users/{uid}"));
    assert_eq!(status, 200);
    assert_eq!(body["groups"][0]["display"], "Staff");
    let (_, found) = read(&jwt, "/Users?filter=userName%20eq%20%22jo%22");
    assert_eq!(found["totalResults"], 1);
    let (status, _) = read(&jwt, "/Users/no-such-id");
    assert_eq!(status, 404);
}

#[test]
fn writes_to_a_group_larger_than_the_limit_answer_204_unless_asked_for_the_members() {
    for db in databases() {
        let s = TestServer::start_with(&db, |c| c.write_response_max_members = 2);
        let mut ids = Vec::new();
        for i in 0..4 {
            let (status, u, _) = call(
                &s,
                reqwest::Method::POST,
                "/Users",
                Some(user(&format!("m{i}"), json!({}))),
                &[],
            );
            assert_eq!(status, 201);
            ids.push(u["id"].as_str().unwrap().to_string());
        }
        let add = |id: &str| {
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                   "Operations": [{"op": "add", "path": "members", "value": [{"value": id}]}]})
        };
        let (_, g, _) = call(
            &s,
            reqwest::Method::POST,
            "/Groups",
            Some(
                json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                        "displayName": "G", "members": [{"value": ids[0]}]}),
            ),
            &[],
        );
        let path = format!("/Groups/{}", g["id"].as_str().unwrap());
        let patch = reqwest::Method::PATCH;
        // Two members: within the limit, the group comes back whole.
        let (status, body, _) = call(&s, patch.clone(), &path, Some(add(&ids[1])), &[]);
        assert_eq!(status, 200);
        assert_eq!(body["members"].as_array().map(Vec::len), Some(2));
        // Three: past it, the change is applied and answered with no body but the new ETag.
        let (status, body, headers) = call(&s, patch.clone(), &path, Some(add(&ids[2])), &[]);
        assert_eq!((status, body), (204, Value::Null));
        assert_eq!(headers["etag"], "W/\"3\"");
        // A client that names what it wants gets it, however large the group.
        let (status, body, _) = call(
            &s,
            patch.clone(),
            &format!("{path}?excludedAttributes=members"),
            Some(add(&ids[3])),
            &[],
        );
        assert_eq!(status, 200);
        assert_eq!(body["displayName"], "G");
        assert!(body.get("members").is_none());
        let rename = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                            "Operations": [{"op": "replace", "path": "displayName", "value": "H"}]});
        let (status, body, _) = call(
            &s,
            patch.clone(),
            &path,
            Some(rename),
            &[("Prefer", "return=representation")],
        );
        assert_eq!(status, 200);
        assert_eq!(body["members"].as_array().map(Vec::len), Some(4));
        // PUT follows the same rule.
        let (status, _, headers) = call(
            &s,
            reqwest::Method::PUT,
            &path,
            Some(
                json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                        "displayName": "H", "members": [{"value": ids[0]}, {"value": ids[1]}, {"value": ids[2]}]}),
            ),
            &[],
        );
        assert_eq!(status, 204);
        assert_eq!(headers["etag"], "W/\"6\"");
        let (_, got, _) = call(&s, reqwest::Method::GET, &path, None, &[]);
        let mut members: Vec<&str> = got["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["value"].as_str().unwrap())
            .collect();
        members.sort_unstable();
        let mut want: Vec<&str> = ids[..3].iter().map(String::as_str).collect();
        want.sort_unstable();
        assert_eq!(members, want);
        assert_eq!(got["displayName"], "H");
    }
}

#[test]
fn a_filter_costing_more_scans_than_allowed_is_too_many() {
    let s = TestServer::start_with(&Db::Sqlite, |c| c.query.max_scans = 2);
    let list = |filter: &str| {
        let r = Client::new()
            .get(format!("{}/Users", s.base))
            .query(&[("filter", filter)])
            .bearer_auth(&s.token)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().unwrap())
    };
    // Within the limit: two `co` scans; an element filter found through its `value eq`
    // (no scan) with a negated `co` (two).
    for ok in [
        r#"userName co "a" or userName co "b""#,
        r#"emails[type eq "work"].value eq "x@example.com" and not (title co "y")"#,
        r#"userName eq "a" or externalId eq "b" or name.familyName sw "c""#,
    ] {
        let (status, body) = list(ok);
        assert_eq!(status, 200, "{ok}: {body}");
    }
    // Three scans: refused before the database is asked.
    for hostile in [
        r#"userName co "a" or userName co "b" or userName ew "c""#,
        r#"not (emails[value co "x"]) and title co "y""#,
        // A membership's type is known only once the nesting above it is walked.
        r#"groups.type eq "indirect" and userName co "a" and title co "y""#,
    ] {
        let (status, body) = list(hostile);
        assert_eq!(status, 400, "{hostile}: {body}");
        assert_eq!(body["scimType"], "tooMany", "{hostile}");
        assert!(
            body["detail"].as_str().unwrap().contains("3 scans"),
            "{body}"
        );
    }
}

/// An Okta-style custom extension (attributes under the app's own URN), declared by
/// `SCIM_SCHEMA_EXTENSIONS`: stored, returned, filterable and validated like the built-in
/// extension, and published by discovery.
#[test]
fn a_configured_extension_schema_is_stored_filtered_validated_and_published() {
    const SPACE: &str = "urn:ietf:params:scim:schemas:custom:Space";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("space.json");
    let attr = |name: &str, ty: &str, multi: bool| {
        json!({"name": name, "type": ty, "multiValued": multi, "mutability": "readWrite",
               "returned": "default", "caseExact": false})
    };
    let mut profile = attr("profile", "complex", false);
    profile["subAttributes"] = json!([
        attr("nickname", "string", false),
        attr("verified", "boolean", false)
    ]);
    let schema = json!({"id": SPACE, "name": "Space", "description": "Okta custom attributes",
        "attributes": [attr("spaceId", "string", false), attr("level", "integer", false),
                       attr("badges", "string", true), profile]});
    std::fs::write(&file, schema.to_string()).unwrap();
    for db in databases() {
        let s = TestServer::start_with(&db, |c| {
            c.schema_extensions = vec![("User".into(), file.clone())]
        });
        let body = user(
            "space.user@example.com",
            json!({SPACE: {"SpaceId": "S-1", "level": 4, "badges": ["a", "b"],
                           "profile": {"nickname": "Nick", "verified": "True"}, "unknown": 1}}),
        );
        let (status, created, _) = call(&s, reqwest::Method::POST, "/Users", Some(body), &[]);
        assert_eq!(status, 201, "{} {created}", db.name());
        assert_eq!(
            created[SPACE],
            json!({"spaceId": "S-1", "level": 4, "badges": ["a", "b"],
                   "profile": {"nickname": "Nick", "verified": true}}),
            "{}",
            db.name()
        );
        assert!(created["schemas"]
            .as_array()
            .unwrap()
            .contains(&json!(SPACE)));
        let id = created["id"].as_str().unwrap().to_string();
        let list = |filter: &str| {
            let path = format!("/Users?attributes=id&filter={}", url_escape(filter));
            let (status, body, _) = call(&s, reqwest::Method::GET, &path, None, &[]);
            assert_eq!(status, 200, "{filter}: {body}");
            body["totalResults"].as_u64().unwrap()
        };
        // filters run on the new attributes, qualified or not, case-insensitively (caseExact false)
        assert_eq!(
            list(&format!("{SPACE}:spaceId eq \"s-1\"")),
            1,
            "{}",
            db.name()
        );
        assert_eq!(list("level gt 3 and badges eq \"b\""), 1, "{}", db.name());
        assert_eq!(list("level gt 4"), 0, "{}", db.name());
        assert_eq!(
            list(&format!("{SPACE}:profile.verified eq true")),
            1,
            "{}",
            db.name()
        );
        // PATCH by path; the schema's types are enforced
        let patch = |path: &str, value: Value| {
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                   "Operations": [{"op": "replace", "path": path, "value": value}]})
        };
        let (status, patched, _) = call(
            &s,
            reqwest::Method::PATCH,
            &format!("/Users/{id}"),
            Some(patch(&format!("{SPACE}:level"), json!(7))),
            &[],
        );
        assert_eq!((status, patched[SPACE]["level"].clone()), (200, json!(7)));
        let (status, err, _) = call(
            &s,
            reqwest::Method::PATCH,
            &format!("/Users/{id}"),
            Some(patch("level", json!("high"))),
            &[],
        );
        assert_eq!(
            (status, err["scimType"].clone()),
            (400, json!("invalidValue"))
        );
        assert_eq!(list("level eq 7"), 1, "{}", db.name());
        // discovery publishes the schema and the resource type's extension
        let (status, published, _) = call(
            &s,
            reqwest::Method::GET,
            &format!("/Schemas/{SPACE}"),
            None,
            &[],
        );
        assert_eq!(status, 200);
        assert_eq!(published["id"], json!(SPACE));
        assert_eq!(published["attributes"].as_array().unwrap().len(), 4);
        let (_, rt, _) = call(&s, reqwest::Method::GET, "/ResourceTypes/User", None, &[]);
        assert!(rt["schemaExtensions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["schema"] == json!(SPACE) && e["required"] == json!(false)));
    }
    // Without the setting the same attributes are ignored, as any undeclared extension is.
    let db = databases().remove(0);
    let s = TestServer::start(&db);
    let (status, created, _) = call(
        &s,
        reqwest::Method::POST,
        "/Users",
        Some(user(
            "plain@example.com",
            json!({SPACE: {"spaceId": "S-1"}}),
        )),
        &[],
    );
    assert_eq!(status, 201);
    assert!(created.get(SPACE).is_none());
}

/// Filters search rows derived from the schemas, so editing a configured extension (here an
/// attribute's `caseExact` flipped) would leave them searching rows built by the old one: a
/// restart with the edited schema rebuilds the attribute index from the stored documents, and
/// a server told not to migrate on start refuses the edited schema instead of serving.
#[test]
fn a_changed_extension_schema_rebuilds_the_attribute_index_on_start() {
    const BADGE: &str = "urn:example:badge:1.0:User";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("badge.json");
    let write_schema = |case_exact: bool| {
        let schema = json!({"id": BADGE, "name": "Badge", "attributes": [{"name": "code",
            "type": "string", "multiValued": false, "mutability": "readWrite",
            "returned": "default", "caseExact": case_exact}]});
        std::fs::write(&file, schema.to_string()).unwrap();
    };
    for db in databases() {
        let url = match &db {
            Db::Postgres(base) => scim_diesel::testing::fresh_postgres_schema(base).unwrap(),
            _ => dir.path().join("scim.db").to_string_lossy().into_owned(),
        };
        let with_schema =
            |c: &mut scim_server::Config| c.schema_extensions = vec![("User".into(), file.clone())];
        let count = |s: &TestServer, filter: &str| {
            let path = format!("/Users?attributes=id&filter={}", url_escape(filter));
            let (status, body, _) = call(s, reqwest::Method::GET, &path, None, &[]);
            assert_eq!(status, 200, "{filter}: {body}");
            body["totalResults"].as_u64().unwrap()
        };
        write_schema(false);
        let id = {
            let s = TestServer::start_with(&Db::Exact(url.clone()), with_schema);
            let body = user(
                "badge.user@example.com",
                json!({BADGE: {"code": "MiXeD-1"}}),
            );
            let (status, created, _) = call(&s, reqwest::Method::POST, "/Users", Some(body), &[]);
            assert_eq!(status, 201, "{} {created}", db.name());
            assert_eq!(count(&s, "code eq \"mixed-1\""), 1, "{}", db.name());
            created["id"].as_str().unwrap().to_string()
        };
        write_schema(true);
        // Not allowed to migrate: the edited schema stops the server, saying what to run.
        let mut config = scim_server::Config::with_database(url.clone());
        config.migrate_on_start = false;
        with_schema(&mut config);
        let err = format!("{:#}", scim_server::AppState::open(config).err().unwrap());
        assert!(err.contains("scim-server migrate"), "{}: {err}", db.name());
        // Allowed (the default): rebuilt, and case now matters in filters on `code`.
        let s = TestServer::start_with(&Db::Exact(url.clone()), with_schema);
        assert_eq!(count(&s, "code eq \"MiXeD-1\""), 1, "{}", db.name());
        assert_eq!(count(&s, "code eq \"mixed-1\""), 0, "{}", db.name());
        // Updates after the rebuild keep the rows in step with the documents.
        let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "path": format!("{BADGE}:code"), "value": "Other-2"}]});
        let (status, _, _) = call(
            &s,
            reqwest::Method::PATCH,
            &format!("/Users/{id}"),
            Some(patch),
            &[],
        );
        assert_eq!(status, 200, "{}", db.name());
        assert_eq!(count(&s, "code eq \"Other-2\""), 1, "{}", db.name());
        assert_eq!(count(&s, "code eq \"MiXeD-1\""), 0, "{}", db.name());
    }
}

/// `SCIM_RATE_LIMIT`: a credential that sends more than its burst at once gets 429 with
/// `Retry-After` and a SCIM error before any work; another credential is not held back, and
/// once the bucket has refilled the first one is served again.
#[test]
fn a_rate_limit_answers_429_with_retry_after_per_credential() {
    let db = databases().remove(0);
    let s = TestServer::start_with(&db, |c| {
        c.rate_limit = 1;
        c.rate_limit_burst = 3;
    });
    let client = Client::new();
    let get = |token: &str| {
        client
            .get(format!("{}/Users?count=1", s.base))
            .bearer_auth(token)
            .send()
            .unwrap()
    };
    for _ in 0..3 {
        assert_eq!(get(&s.token).status(), 200);
    }
    let refused = get(&s.token);
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(refused.headers()["content-type"], "application/scim+json");
    let body: Value = refused.json().unwrap();
    assert_eq!(body["status"], "429", "{body}");
    assert_eq!(
        body["schemas"],
        json!(["urn:ietf:params:scim:api:messages:2.0:Error"])
    );
    // another credential has its own bucket (this one is refused for what it is)
    assert_eq!(get("scim_not-a-token").status(), 401);
    // a second later the bucket holds a request again
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(get(&s.token).status(), 200);
    assert_eq!(get(&s.token).status(), 429);
}

/// A list parameter given twice holds both values; another one given twice with different
/// values is refused as ambiguous (400 `invalidSyntax`) rather than answered with one of them,
/// and given twice with the same value counts once. The same holds for `.search` bodies.
#[test]
fn a_repeated_parameter_is_merged_or_refused() {
    let db = databases().remove(0);
    let s = TestServer::start(&db);
    let (status, _, _) = call(
        &s,
        reqwest::Method::POST,
        "/Users",
        Some(user(
            "rep@example.com",
            json!({"title": "T", "displayName": "Rep"}),
        )),
        &[],
    );
    assert_eq!(status, 201);
    let get = |query: &str| {
        call(
            &s,
            reqwest::Method::GET,
            &format!("/Users?{query}"),
            None,
            &[],
        )
    };
    let (status, body, _) = get("attributes=title&Attributes=displayName");
    assert_eq!(status, 200, "{body}");
    let found = &body["Resources"][0];
    assert_eq!(
        (&found["title"], &found["displayName"]),
        (&json!("T"), &json!("Rep")),
        "{body}"
    );
    assert!(found.get("id").is_some()); // always returned
    assert!(
        found.get("emails").is_none() && found.get("name").is_none(),
        "{body}"
    );
    let (status, body, _) = get("count=1&COUNT=1");
    assert_eq!(
        (status, body["itemsPerPage"].clone()),
        (200, json!(1)),
        "{body}"
    );
    for query in [
        "filter=userName%20eq%20%22rep@example.com%22&filter=userName%20eq%20%22x%22",
        "count=1&count=2",
        "startIndex=1&startindex=2",
    ] {
        let (status, body, _) = get(query);
        assert_eq!(
            (status, body["scimType"].clone()),
            (400, json!("invalidSyntax")),
            "{query}: {body}"
        );
        assert!(
            body["detail"].as_str().unwrap().contains("more than once"),
            "{body}"
        );
    }
    let search = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
        "filter": "userName eq \"rep@example.com\"", "Filter": "userName eq \"x\""});
    let (status, body, _) = call(
        &s,
        reqwest::Method::POST,
        "/Users/.search",
        Some(search),
        &[],
    );
    assert_eq!(
        (status, body["scimType"].clone()),
        (400, json!("invalidSyntax")),
        "{body}"
    );
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `SCIM_UNIQUE_GROUP_NAMES`: off by default (RFC 7643 puts no constraint on a Group's
/// `displayName`); turned on over a database that already has groups, it refuses to start
/// while two of them share a name, then makes every create, PUT, PATCH and `/Bulk` write
/// that would repeat a name (case-insensitively, per resource type) a 409 `uniqueness`,
/// also when clients race; turned off again, names may repeat.
#[test]
fn unique_group_names_refuse_a_second_group_of_one_name() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let group = |name: &str| json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": name});
    let post =
        |s: &TestServer, name: &str| call(s, Method::POST, "/Groups", Some(group(name)), &[]);
    let unique = |c: &mut scim_server::Config| c.unique_group_names = true;
    for db in databases() {
        let url = match &db {
            Db::Postgres(base) => scim_diesel::testing::fresh_postgres_schema(base).unwrap(),
            _ => dir.path().join("unique.db").to_string_lossy().into_owned(),
        };
        let name = db.name();
        let names = |s: &TestServer| -> Vec<String> {
            let (_, list, _) = call(s, Method::GET, "/Groups?attributes=displayName", None, &[]);
            let mut v: Vec<String> = list["Resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["displayName"].as_str().unwrap().to_string())
                .collect();
            v.sort();
            v
        };
        // Off: a retried create makes a second group.
        let second_sales = {
            let s = TestServer::start(&Db::Exact(url.clone()));
            assert_eq!(post(&s, "Sales").0, 201, "{name}");
            assert_eq!(post(&s, "Ops").0, 201, "{name}");
            let (status, again, _) = post(&s, "SALES");
            assert_eq!(status, 201, "{name}");
            again["id"].as_str().unwrap().to_string()
        };
        // Not allowed to migrate: the new setting stops the server, saying what to run.
        let mut config = scim_server::Config::with_database(url.clone());
        config.migrate_on_start = false;
        unique(&mut config);
        let err = format!("{:#}", scim_server::AppState::open(config).err().unwrap());
        assert!(err.contains("scim-server migrate"), "{name}: {err}");
        // Allowed, but two groups share a name: refused, naming it.
        let mut config = scim_server::Config::with_database(url.clone());
        unique(&mut config);
        let err = format!("{:#}", scim_server::AppState::open(config).err().unwrap());
        assert!(err.contains("\"sales\""), "{name}: {err}");
        {
            let s = TestServer::start(&Db::Exact(url.clone()));
            let path = format!("/Groups/{second_sales}");
            assert_eq!(call(&s, Method::DELETE, &path, None, &[]).0, 204);
        }

        let s = TestServer::start_with(&Db::Exact(url.clone()), unique);
        let (status, body, _) = post(&s, "sales");
        assert_eq!(
            (status, body["scimType"].clone()),
            (409, json!("uniqueness")),
            "{name}"
        );
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.contains("Group with this displayName"),
            "{name}: {detail}"
        );
        // Published: /Schemas says the name is unique.
        let (_, schema, _) = call(
            &s,
            Method::GET,
            "/Schemas/urn:ietf:params:scim:schemas:core:2.0:Group",
            None,
            &[],
        );
        let display_name = schema["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "displayName")
            .unwrap();
        assert_eq!(display_name["uniqueness"], json!("server"), "{name}");
        // A user may carry the same name: uniqueness is per resource type.
        assert_eq!(
            call(
                &s,
                Method::POST,
                "/Users",
                Some(user("Sales", json!({}))),
                &[]
            )
            .0,
            201,
            "{name}"
        );
        // Renames into a taken name are refused and change nothing; out of one, free it.
        let (_, ops, _) = call(
            &s,
            Method::GET,
            "/Groups?filter=displayName%20eq%20%22Ops%22",
            None,
            &[],
        );
        let ops_id = ops["Resources"][0]["id"].as_str().unwrap().to_string();
        let ops_path = format!("/Groups/{ops_id}");
        let rename = |to: &str| {
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "replace", "value": {"id": ops_id, "displayName": to}}]})
        };
        let (status, body, _) = call(&s, Method::PATCH, &ops_path, Some(rename("SALES")), &[]);
        assert_eq!(
            (status, body["scimType"].clone()),
            (409, json!("uniqueness")),
            "{name}"
        );
        let (status, _, _) = call(&s, Method::PUT, &ops_path, Some(group("Sales")), &[]);
        assert_eq!(status, 409, "{name}");
        assert_eq!(names(&s), ["Ops", "Sales"], "{name}");
        let (status, _, _) = call(&s, Method::PATCH, &ops_path, Some(rename("Marketing")), &[]);
        assert_eq!(status, 200, "{name}");
        assert_eq!(post(&s, "ops").0, 201, "{name}: the old name is free again");
        // /Bulk: the second create of one name fails on its own.
        let bulk = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
            "Operations": [
                {"method": "POST", "path": "/Groups", "bulkId": "a", "data": group("Finance")},
                {"method": "POST", "path": "/Groups", "bulkId": "b", "data": group("finance")}]});
        let (status, body, _) = call(&s, Method::POST, "/Bulk", Some(bulk), &[]);
        assert_eq!(status, 200, "{name}: {body}");
        let statuses: Vec<&str> = body["Operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["201", "409"], "{name}: {body}");
        // Racing creates of one name: exactly one wins.
        let statuses: Vec<u16> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..8)
                .map(|i| {
                    let s = &s;
                    scope.spawn(move || post(s, if i % 2 == 0 { "Race" } else { "RACE" }).0)
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert_eq!(
            statuses.iter().filter(|&&c| c == 201).count(),
            1,
            "{name}: {statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|&&c| c == 409).count(),
            7,
            "{name}: {statuses:?}"
        );
        // (either spelling may have won the race)
        let mut now: Vec<String> = names(&s).iter().map(|n| n.to_lowercase()).collect();
        now.sort();
        assert_eq!(
            now,
            ["finance", "marketing", "ops", "race", "sales"],
            "{name}"
        );
        drop(s);

        // Off again: names may repeat.
        let s = TestServer::start(&Db::Exact(url.clone()));
        assert_eq!(post(&s, "Sales").0, 201, "{name}");
    }
}
