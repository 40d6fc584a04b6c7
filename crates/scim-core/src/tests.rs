//! Unit tests of validation, PATCH and projection, through small `check` helpers.

use serde_json::{json, Value};

use crate::patch::prepare_patch;
use crate::render::{render, Projection};
use crate::resource::{prepare_create, Ctx};
use crate::schema::Uniqueness;
use crate::store::{MemberOp, ResourceRecord, ResourceWrite};
use crate::{SchemaRegistry, ScimType};

fn registry() -> SchemaRegistry {
    SchemaRegistry::builtin().unwrap()
}

fn record(ctx: &Ctx<'_>, w: ResourceWrite) -> ResourceRecord {
    ResourceRecord {
        id: "id1".into(),
        resource_type: ctx.rt.id.clone(),
        version: 1,
        created: "2026-01-01T00:00:00.000000Z".into(),
        last_modified: "2026-01-01T00:00:00.000000Z".into(),
        external_id: w.external_id,
        data: w.data.into(),
        members: None,
        groups: None,
    }
}

/// Creates `body`, applies `patch`, renders with default projection (minus meta).
fn patch_user(body: Value, ops: Value) -> Result<Value, crate::ScimError> {
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    let rec = record(&ctx, prepare_create(&ctx, &body).unwrap());
    let patch =
        json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops});
    let w = prepare_patch(&ctx, &patch, &rec, &Default::default())?;
    let out = render(
        &ctx,
        &record(&ctx, w),
        "http://x/scim/v2",
        &Projection::parse(&ctx, None, Some("meta")),
    );
    Ok(out)
}

fn user(extra: Value) -> Value {
    let mut base =
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "bjensen"});
    if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
        b.extend(e);
    }
    base
}

#[test]
fn create_normalizes_names_types_and_ignores_unknown_and_read_only() {
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    let body = json!({
        "schemas": ["urn:scim:schemas:core:1.0", "urn:ietf:params:scim:schemas:core:2.0:User"],
        "UserName": "BJensen", "Active": "False", "id": "client-id", "meta": {"resourceType": "User"},
        "groups": [], "password": "secret", "unknownThing": 1, "title": null, "roles": [],
        "emails": {"value": "b@example.com", "type": "work", "primary": "True"},
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"Manager": "271", "department": "Sales"},
        "urn:ietf:params:scim:schemas:extension:Custom:2.0:User": {"x": 1}
    });
    let w = prepare_create(&ctx, &body).unwrap();
    assert_eq!(
        Value::Object(w.data),
        json!({
            "userName": "BJensen", "active": false,
            "emails": [{"value": "b@example.com", "type": "work", "primary": true}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"manager": {"value": "271"}, "department": "Sales"}
        })
    );
    assert_eq!(w.keys.unique_name.as_deref(), Some("bjensen"));
}

#[test]
fn create_errors() {
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    let cases = [
        (json!([1]), ScimType::InvalidSyntax),
        (json!({"userName": "a"}), ScimType::InvalidSyntax),
        (
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "userName": "a"}),
            ScimType::InvalidSyntax,
        ),
        (user(json!({"userName": ""})), ScimType::InvalidValue),
        (
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"]}),
            ScimType::InvalidValue,
        ),
        (user(json!({"active": 3})), ScimType::InvalidValue),
        (user(json!({"userName": 5})), ScimType::InvalidValue),
        (user(json!({"name": "x"})), ScimType::InvalidValue),
        (
            user(
                json!({"emails": [{"value": "a", "primary": true}, {"value": "b", "primary": true}]}),
            ),
            ScimType::InvalidValue,
        ),
    ];
    for (body, want) in cases {
        let err = prepare_create(&ctx, &body).unwrap_err();
        assert_eq!(err.status, 400, "{body}");
        assert_eq!(err.scim_type, Some(want), "{body}: {err}");
    }
}

#[test]
fn patch_replace_forms() {
    // Entra ID, without the compatibility flag: capitalised op, string boolean.
    let out = patch_user(
        user(json!({})),
        json!([{"op": "Replace", "path": "active", "value": "False"}]),
    )
    .unwrap();
    assert_eq!(out["active"], json!(false));
    // Okta path-less deactivate.
    let out = patch_user(
        user(json!({})),
        json!([{"op": "replace", "value": {"active": false}}]),
    )
    .unwrap();
    assert_eq!(out["active"], json!(false));
    // Entra ID with the flag: dotted and URN keys.
    let out = patch_user(
        user(json!({})),
        json!([{"op": "replace", "value": {
            "displayName": "Jane", "name.givenName": "Jane", "name.familyName": "Doe",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber": "701984"}}]),
    )
    .unwrap();
    assert_eq!(
        out["name"],
        json!({"givenName": "Jane", "familyName": "Doe"})
    );
    assert_eq!(
        out["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["employeeNumber"],
        json!("701984")
    );
    assert!(out["schemas"].as_array().unwrap().len() == 2);
}

#[test]
fn patch_value_paths_and_upsert() {
    let base = user(json!({"emails": [{"type": "home", "value": "h@x", "primary": true}]}));
    // No work email yet: Entra expects it to be created.
    let out = patch_user(
        base.clone(),
        json!([{"op": "Add", "path": "emails[type eq \"work\"].value", "value": "w@x"}]),
    )
    .unwrap();
    assert_eq!(
        out["emails"],
        json!([{"type": "home", "value": "h@x", "primary": true}, {"type": "work", "value": "w@x"}])
    );
    // Replace the existing home one.
    let out = patch_user(
        base.clone(),
        json!([{"op": "replace", "path": "emails[type eq \"home\"].value", "value": "h2@x"}]),
    )
    .unwrap();
    assert_eq!(
        out["emails"],
        json!([{"type": "home", "value": "h2@x", "primary": true}])
    );
    // Remove by filter.
    let out = patch_user(
        base.clone(),
        json!([{"op": "remove", "path": "emails[type eq \"home\"]"}]),
    )
    .unwrap();
    assert!(out.get("emails").is_none());
    // Adding a new primary clears the old one.
    let out = patch_user(
        base,
        json!([{"op": "add", "path": "emails", "value": [{"value": "n@x", "primary": true}]}]),
    )
    .unwrap();
    assert_eq!(
        out["emails"],
        json!([{"type": "home", "value": "h@x", "primary": false}, {"value": "n@x", "primary": true}])
    );
}

#[test]
fn patch_errors_apply_nothing() {
    let cases = [
        (json!([{"op": "remove"}]), ScimType::NoTarget),
        (
            json!([{"op": "remove", "path": "userName"}]),
            ScimType::InvalidValue,
        ),
        (
            json!([{"op": "replace", "path": "id", "value": "x"}]),
            ScimType::Mutability,
        ),
        (
            json!([{"op": "replace", "value": {"id": "other"}}]),
            ScimType::Mutability,
        ),
        (
            json!([{"op": "replace", "path": "nope", "value": "x"}]),
            ScimType::InvalidPath,
        ),
        (
            json!([{"op": "replace", "path": "emails[type eq", "value": "x"}]),
            ScimType::InvalidPath,
        ),
        (
            json!([{"op": "jump", "path": "title", "value": "x"}]),
            ScimType::InvalidSyntax,
        ),
        (
            json!([{"op": "replace", "path": "title", "value": "ok"}, {"op": "replace", "path": "active", "value": "maybe"}]),
            ScimType::InvalidValue,
        ),
    ];
    for (ops, want) in cases {
        let err = patch_user(user(json!({})), ops.clone()).unwrap_err();
        assert_eq!(err.scim_type, Some(want), "{ops}: {err}");
    }
}

#[test]
fn patch_empty_operations_is_noop_and_okta_id_is_accepted() {
    let out = patch_user(user(json!({"title": "t"})), json!([])).unwrap();
    assert_eq!(out["title"], json!("t"));
    let out = patch_user(
        user(json!({})),
        json!([{"op": "replace", "value": {"id": "id1", "displayName": "D"}}]),
    )
    .unwrap();
    assert_eq!(out["displayName"], json!("D"));
}

#[test]
fn group_membership_becomes_set_operations() {
    let reg = registry();
    let ctx = Ctx::new(&reg, "Group").unwrap();
    let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "G", "members": [{"value": "u1"}]});
    let w = prepare_create(&ctx, &body).unwrap();
    assert_eq!(w.member_ops, vec![MemberOp::Add(vec!["u1".into()])]);
    let rec = record(&ctx, w);
    let ops = |o: Value| {
        let body =
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": o});
        prepare_patch(&ctx, &body, &rec, &Default::default()).map(|w| w.member_ops)
    };
    // Entra: remove with a value list removes only those.
    assert_eq!(
        ops(json!([{"op": "Remove", "path": "members", "value": [{"$ref": null, "value": "u1"}]}]))
            .unwrap(),
        vec![MemberOp::Remove(vec!["u1".into()])]
    );
    // Okta: remove by filter, add by array.
    assert_eq!(
        ops(json!([{"op": "remove", "path": "members[value eq \"u1\"]"}, {"op": "add", "path": "members", "value": [{"value": "u2", "display": "x"}]}])).unwrap(),
        vec![MemberOp::Remove(vec!["u1".into()]), MemberOp::Add(vec!["u2".into()])]
    );
    // Okta "Push now" on an empty group.
    assert_eq!(
        ops(json!([{"op": "replace", "path": "members", "value": []}])).unwrap(),
        vec![MemberOp::RemoveAll]
    );
    // Path-less rename carrying the group's id, with members.
    assert_eq!(
        ops(json!([{"op": "replace", "value": {"id": "id1", "displayName": "New", "members": [{"value": "u3"}]}}])).unwrap(),
        vec![MemberOp::RemoveAll, MemberOp::Add(vec!["u3".into()])]
    );
}

/// `rec` rendered with `attributes` / `excludedAttributes` as a client sends them.
fn projected(
    ctx: &Ctx<'_>,
    rec: &ResourceRecord,
    attributes: Option<&str>,
    excluded: Option<&str>,
) -> Value {
    let projection = Projection::parse(ctx, attributes, excluded);
    render(ctx, rec, "http://x/scim/v2", &projection)
}

#[test]
fn projection_honours_returned_and_parameters() {
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    let w = prepare_create(&ctx, &user(json!({"externalId": "e1", "name": {"givenName": "B", "familyName": "J"}, "emails": [{"value": "b@x", "type": "work"}]}))).unwrap();
    let rec = record(&ctx, w);
    let r = |a: Option<&str>, e: Option<&str>| projected(&ctx, &rec, a, e);
    let only = r(Some("userName,name.givenName"), None);
    assert_eq!(
        only,
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": "id1", "userName": "bjensen", "name": {"givenName": "B"}})
    );
    let without = r(None, Some("emails,meta,name.familyName,externalId"));
    assert_eq!(
        without,
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": "id1", "userName": "bjensen", "name": {"givenName": "B"}})
    );
    let emails_value = r(Some("EMAILS.VALUE"), None);
    assert_eq!(emails_value["emails"], json!([{"value": "b@x"}]));
    let full = r(None, None);
    assert_eq!(
        full["meta"]["location"],
        json!("http://x/scim/v2/Users/id1")
    );
    assert_eq!(full["meta"]["version"], json!("W/\"1\""));
    // id cannot be excluded
    assert_eq!(r(None, Some("id"))["id"], json!("id1"));
}

#[test]
fn members_display_is_returned_only_on_request() {
    let reg = registry();
    let ctx = Ctx::new(&reg, "Group").unwrap();
    let w = prepare_create(
        &ctx,
        &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "G"}),
    )
    .unwrap();
    let mut rec = record(&ctx, w);
    rec.members = Some(vec![crate::store::MemberRef {
        id: "u1".into(),
        resource_type: "User".into(),
        display: Some("Alice".into()),
        indirect: false,
    }]);
    let r = |a: Option<&str>| {
        render(
            &ctx,
            &rec,
            "http://x/scim/v2",
            &Projection::parse(&ctx, a, None),
        )["members"]
            .clone()
    };
    assert_eq!(
        r(None),
        json!([{"value": "u1", "$ref": "http://x/scim/v2/Users/u1", "type": "User"}])
    );
    assert_eq!(
        r(Some("members")),
        json!([{"value": "u1", "$ref": "http://x/scim/v2/Users/u1", "type": "User"}])
    );
    assert_eq!(
        r(Some("members.display,members.value")),
        json!([{"value": "u1", "display": "Alice"}])
    );
}

#[test]
fn members_written_page_by_page_are_the_members_rendered_at_once() {
    let reg = registry();
    let ctx = Ctx::new(&reg, "Group").unwrap();
    let w = prepare_create(
        &ctx,
        &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "G \"q\""}),
    )
    .unwrap();
    let bare = record(&ctx, w);
    let members: Vec<crate::store::MemberRef> = (0..7)
        .map(|i| crate::store::MemberRef {
            id: format!("u{i}"),
            resource_type: if i == 3 { "Group" } else { "User" }.into(),
            display: (i % 2 == 0).then(|| format!("Name {i}")),
            indirect: false,
        })
        .collect();
    let base = "http://x/scim/v2";
    for (attrs, excluded) in [
        (None, None),
        (Some("members"), None),
        (Some("members.display"), None),
        (Some("members.value,displayName"), None),
        (None, Some("members.$ref")),
        (None, Some("meta")),
    ] {
        let proj = Projection::parse(&ctx, attrs, excluded);
        for list in [&members[..0], &members[..1], &members[..]] {
            let mut whole = bare.clone();
            whole.members = Some(list.to_vec());
            let expected = render(&ctx, &whole, base, &proj);
            let mut out = Vec::new();
            let mut pages = crate::render::MemberPages::new(&ctx, base, &proj).unwrap();
            pages.start(
                &mut out,
                &crate::render::Rendered::new(&ctx, &bare, base, &proj),
            );
            for chunk in list.chunks(3) {
                pages.push(&mut out, chunk);
            }
            pages.finish(&mut out);
            let got: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(
                got,
                expected,
                "{attrs:?} {excluded:?} {} members",
                list.len()
            );
        }
    }
    // Nothing to write page by page when members are not shown.
    let proj = Projection::parse(&ctx, None, Some("members"));
    assert!(crate::render::MemberPages::new(&ctx, base, &proj).is_none());
}

#[test]
fn a_list_envelope_around_its_items_is_the_list_response() {
    use crate::messages::ListResponse;
    let items = [json!({"id": "a"}), json!({"id": "b\"c"})];
    for (start, cursors) in [(Some(3), false), (None, true)] {
        for n in [0, 1, 2] {
            let mut list = ListResponse::new(40, start, items[..n].to_vec());
            if cursors {
                list.next_cursor = Some("n\"1".into());
                list.previous_cursor = Some("p".into());
            }
            let (head, tail) = list.envelope();
            let mut out = head;
            for (i, item) in items[..n].iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(item).unwrap());
            }
            out.extend(tail);
            assert_eq!(
                serde_json::from_slice::<Value>(&out).unwrap(),
                serde_json::to_value(&list).unwrap()
            );
        }
    }
}

#[test]
fn a_stored_document_renders_as_its_parsed_attributes_do() {
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    let ext = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    let data = json!({
        "userName": "bjensen", "displayName": "Babs \"B\" Jensen", "active": true,
        "name": {"givenName": "Barbara", "familyName": "Jensen", "x-unknown": 1},
        "emails": [{"value": "b@example.com", "type": "work", "primary": true}, {"value": "h@example.com"}],
        "phoneNumbers": [], "addresses": [{}], "ims": [{"value": "b"}, {}],
        "nickName": "é\u{1F600}", "x-not-in-schema": "hidden",
        ext: {"department": "Tour", "manager": {"value": "m1"}, "costCenter": "4"}
    });
    let Value::Object(map) = data else { panic!() };
    let text = serde_json::to_string(&map).unwrap();
    let stored = |data| ResourceRecord {
        id: "id1".into(),
        resource_type: "User".into(),
        version: 3,
        created: "2026-01-01T00:00:00.000000Z".into(),
        last_modified: "2026-01-02T00:00:00.000000Z".into(),
        external_id: Some("e1".into()),
        data,
        members: None,
        groups: Some(Vec::new()),
    };
    let parsed = stored(map.clone().into());
    let from_text = stored(crate::store::Document::from_stored(text).unwrap());
    assert!(from_text.data.stored_text().is_some());
    for (a, e) in [
        (None, None),
        (None, Some("emails.type")),
        (None, Some("name.familyName,meta")),
        (Some("emails.value,userName"), None),
        (Some("name"), None),
        (Some(ext), None),
        (None, Some(&format!("{ext}:manager"))),
        (Some(&format!("{ext}:department")), None),
        (None, Some("meta.location,meta.version")),
        (Some("meta.created,userName"), None),
    ] {
        let p = Projection::parse(&ctx, a, e);
        let one = |r| {
            serde_json::to_string(&crate::render::Rendered::new(&ctx, r, "http://x/v2", &p))
                .unwrap()
        };
        assert_eq!(
            one(&from_text),
            one(&parsed),
            "attributes={a:?} excluded={e:?}"
        );
    }
    // Spot checks of what both gave: projection and emptiness rules still apply.
    let p = Projection::parse(&ctx, None, Some("emails.type"));
    let out = render(&ctx, &from_text, "http://x/v2", &p);
    assert_eq!(
        out["emails"][0],
        json!({"value": "b@example.com", "primary": true})
    );
    assert_eq!(out["ims"], json!([{"value": "b"}]));
    assert!(out.get("phoneNumbers").is_none() && out.get("addresses").is_none());
    assert!(out.get("x-not-in-schema").is_none());
    assert_eq!(out["displayName"], "Babs \"B\" Jensen");
    let p = Projection::parse(&ctx, None, Some("meta.location"));
    let meta = &render(&ctx, &from_text, "http://x/v2", &p)["meta"];
    assert!(meta.get("location").is_none() && meta["version"] == "W/\"3\"");
    let p = Projection::parse(&ctx, None, None);
    let out = render(&ctx, &from_text, "http://x/v2", &p);
    assert_eq!(out["meta"]["location"], "http://x/v2/Users/id1");
    assert_eq!(
        out[ext],
        json!({"department": "Tour", "manager": {"value": "m1"}, "costCenter": "4"})
    );
}

#[test]
fn a_corrupt_stored_document_is_refused_when_read() {
    use crate::store::Document;
    assert!(Document::from_stored("{\"userName\": ".into()).is_err());
    assert!(Document::from_stored("[1]".into()).is_err());
    let mut d = Document::from_stored("{\"userName\":\"a\"}".into()).unwrap();
    assert_eq!(d.get("userName"), Some(&json!("a")));
    d.insert("title".into(), json!("x"));
    // Changed: no longer the stored text.
    assert!(d.stored_text().is_none());
    assert_eq!(d.len(), 2);
}

#[test]
fn extension_attributes_named_without_their_urn() {
    const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    // Older Entra ID documents: `manager` as a short path with an array value.
    let out = patch_user(
        user(json!({})),
        json!([{"op": "Add", "path": "manager", "value": [{"$ref": "../Users/m1", "value": "m1"}]},
               {"op": "replace", "path": "department", "value": "Sales"}]),
    )
    .unwrap();
    assert_eq!(out[ENT]["manager"]["value"], json!("m1"));
    assert_eq!(out[ENT]["department"], json!("Sales"));
    assert!(out.get("manager").is_none() && out.get("department").is_none());
    // removed by the short name too
    let out = patch_user(
        user(json!({ENT: {"department": "Sales", "costCenter": "c1"}})),
        json!([{"op": "remove", "path": "department"}]),
    )
    .unwrap();
    assert_eq!(out[ENT], json!({"costCenter": "c1"}));
    // a name no schema of the type defines stays unknown
    let err = patch_user(
        user(json!({})),
        json!([{"op": "replace", "path": "nosuchattribute", "value": "x"}]),
    )
    .unwrap_err();
    assert_eq!(err.scim_type, Some(ScimType::InvalidPath));
    // and the registry resolves the short name to the extension, as filters and `attributes` use it
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    let r = reg.resolve(ctx.rt, None, "Manager", Some("value")).unwrap();
    assert!(r.is_extension);
    assert_eq!(r.schema.id, ENT);
    assert!(reg
        .resolve(ctx.rt, None, "userName", None)
        .is_some_and(|r| !r.is_extension));
    let group = Ctx::new(&reg, "Group").unwrap();
    assert!(reg.resolve(group.rt, None, "manager", None).is_none());
}

#[test]
fn role_values_holding_json_objects_are_unwrapped() {
    // Entra ID app role assignments in PATCH: the element's sub-attributes as a JSON string.
    let role =
        r#"{"id":"06b07648-ecfe-589f-9d2f-6325724a46ee","value":"25","displayName":"Role1234"}"#;
    let out = patch_user(
        user(json!({})),
        json!([{"op": "Add", "path": "roles", "value": [{"value": role}]}]),
    )
    .unwrap();
    assert_eq!(
        out["roles"],
        json!([{"value": "25", "display": "Role1234"}])
    );
    // the element's own sub-attributes win over the embedded ones
    let out = patch_user(
        user(json!({})),
        json!([{"op": "add", "path": "roles", "value": [{"value": role, "primary": "false", "display": "Mine"}]}]),
    )
    .unwrap();
    assert_eq!(
        out["roles"],
        json!([{"value": "25", "display": "Mine", "primary": false}])
    );
    // a value that merely looks like JSON, or is not an object with `value`, stays as sent
    for kept in ["{not json", r#"{"id":"x"}"#, "[1]"] {
        let out = patch_user(
            user(json!({})),
            json!([{"op": "add", "path": "roles", "value": [{"value": kept}]}]),
        )
        .unwrap();
        assert_eq!(out["roles"], json!([{"value": kept}]), "{kept}");
    }
    // strict mode stores the string as sent
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap().with_strict(true);
    let w = prepare_create(&ctx, &user(json!({"roles": [{"value": role}]}))).unwrap();
    assert_eq!(w.data.get("roles").unwrap(), &json!([{"value": role}]));
}

#[test]
fn extension_schemas_are_checked_before_they_are_added() {
    use crate::schema::Schema;
    let attr = |name: &str, ty: &str| json!({"name": name, "type": ty, "multiValued": false, "mutability": "readWrite", "returned": "default"});
    let schema = |id: &str, attrs: Value| -> Schema {
        serde_json::from_value(json!({"id": id, "name": "X", "attributes": attrs})).unwrap()
    };
    let ok = schema("urn:example:ext:1.0:User", json!([attr("badge", "string")]));
    let reg = registry()
        .with_extension("user", ok.clone(), false)
        .unwrap();
    let ctx = Ctx::new(&reg, "User").unwrap();
    assert!(reg.extension(ctx.rt, "URN:EXAMPLE:EXT:1.0:USER").is_some());
    assert!(reg.schema("urn:example:ext:1.0:User").is_some());
    // a body carrying it keeps it
    let w = prepare_create(
        &ctx,
        &user(json!({"urn:example:ext:1.0:User": {"BADGE": "b1"}})),
    )
    .unwrap();
    assert_eq!(
        w.data.get("urn:example:ext:1.0:User").unwrap(),
        &json!({"badge": "b1"})
    );

    let refused = |rt: &str, s: Schema| registry().with_extension(rt, s, false).unwrap_err().detail;
    assert!(refused("Device", ok.clone()).contains("no resource type"));
    assert!(refused("User", schema("not-a-urn", json!([attr("a", "string")]))).contains("URN"));
    let again = schema(
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
        json!([attr("a", "string")]),
    );
    assert!(refused("User", again).contains("exists already"));
    let cases = [
        (json!([attr("1abc", "string")]), "not an attribute name"),
        (json!([attr("a b", "string")]), "not an attribute name"),
        (
            json!([attr("a", "string"), attr("A", "integer")]),
            "defined twice",
        ),
        (json!([attr("c", "complex")]), "no sub-attributes"),
        (
            json!([{"name": "c", "type": "complex", "multiValued": false, "mutability": "readWrite", "returned": "default",
                    "subAttributes": [{"name": "d", "type": "complex", "multiValued": false, "mutability": "readWrite",
                                       "returned": "default", "subAttributes": [attr("e", "string")]}]}]),
            "is complex",
        ),
        (
            json!([{"name": "s", "type": "string", "multiValued": false, "mutability": "writeOnly", "returned": "never"}]),
            "writeOnly",
        ),
        (
            json!([{"name": "u", "type": "string", "multiValued": false, "mutability": "readWrite", "returned": "default", "uniqueness": "server"}]),
            "uniqueness",
        ),
    ];
    for (attrs, why) in cases {
        let detail = refused("User", schema("urn:example:bad", attrs.clone()));
        assert!(detail.contains(why), "{attrs}: {detail}");
    }
}

#[test]
fn scim_1_core_urns_alone_are_read_as_the_endpoint_type_unless_strict() {
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    let body = json!({"schemas": ["urn:scim:schemas:core:1.0"], "userName": "ada",
                      "emails": {"value": "ada@acme.test", "type": "work"}});
    let w = prepare_create(&ctx, &body).unwrap();
    assert_eq!(w.data.get("userName").unwrap(), &json!("ada"));
    let strict = ctx.with_strict(true);
    let err = prepare_create(&strict, &body).unwrap_err();
    assert_eq!(err.scim_type, Some(ScimType::InvalidSyntax));
    // anything else without the core URN is still refused, multi-byte text included
    for schemas in [
        json!(["urn:example:other"]),
        json!(["urn:scim:schemas:core:"]),
        json!(["urn:scim:schemas:cöre:1.0"]),
        json!(["ü"]),
    ] {
        let err =
            prepare_create(&ctx, &json!({"schemas": schemas, "userName": "ada"})).unwrap_err();
        assert_eq!(err.scim_type, Some(ScimType::InvalidSyntax), "{schemas}");
    }
}

#[test]
fn documents_with_the_same_key_attributes_have_the_same_index_keys() {
    use crate::resource::{index_keys, same_index_keys};
    let reg = registry();
    let docs = [
        json!({"userName": "Ada", "displayName": "Ada L", "title": "x"}),
        json!({"userName": "Ada", "displayName": "Ada L", "title": "y", "active": true}),
        json!({"userName": "ada", "displayName": "Ada L"}),
        json!({"userName": "Ada"}),
        json!({"userName": "Ada", "displayName": null}),
        json!({"displayName": "Ada L"}),
    ];
    for rt in ["User", "Group"] {
        let ctx = Ctx::new(&reg, rt).unwrap();
        for a in &docs {
            for b in &docs {
                let (a, b) = (a.as_object().unwrap(), b.as_object().unwrap());
                if same_index_keys(a, b) {
                    assert_eq!(
                        index_keys(&ctx, a),
                        index_keys(&ctx, b),
                        "{rt}: {a:?} {b:?}"
                    );
                }
            }
        }
    }
    let (a, b) = (docs[0].as_object().unwrap(), docs[1].as_object().unwrap());
    assert!(same_index_keys(a, b), "a title change leaves the keys");
    let (a, c) = (docs[0].as_object().unwrap(), docs[2].as_object().unwrap());
    assert!(
        !same_index_keys(a, c),
        "any change of userName, even of case only, takes the update that rewrites the keys"
    );
}

#[test]
fn roles_joined_into_one_string_are_split_unless_strict() {
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    let body = json!({"schemas": [crate::urns::USER], "userName": "ada", "roles": " admin, billing ,,Sales "});
    let w = prepare_create(&ctx, &body).unwrap();
    assert_eq!(
        w.data.get("roles").unwrap(),
        &json!([{"value": "admin"}, {"value": "billing"}, {"value": "Sales"}])
    );
    // an array keeps a role name with a comma as it is
    let body = json!({"schemas": [crate::urns::USER], "userName": "ada", "roles": ["Sales, EMEA"]});
    let w = prepare_create(&ctx, &body).unwrap();
    assert_eq!(
        w.data.get("roles").unwrap(),
        &json!([{"value": "Sales, EMEA"}])
    );
    // other multi-valued attributes are not split
    let body = json!({"schemas": [crate::urns::USER], "userName": "ada", "entitlements": "a,b"});
    let w = prepare_create(&ctx, &body).unwrap();
    assert_eq!(
        w.data.get("entitlements").unwrap(),
        &json!([{"value": "a,b"}])
    );
    let strict = ctx.with_strict(true);
    let body = json!({"schemas": [crate::urns::USER], "userName": "ada", "roles": "admin,billing"});
    let err = prepare_create(&strict, &body).unwrap_err();
    assert_eq!(err.scim_type, Some(ScimType::InvalidValue));
}

#[test]
fn strings_holding_nul_are_refused_wherever_they_would_be_stored() {
    // PostgreSQL text cannot hold U+0000; both databases refuse it alike, with a 400.
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    let enterprise = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    for body in [
        user(json!({"title": "a\u{0}b"})),
        user(json!({"emails": [{"value": "x\u{0}@example.com"}]})),
        user(json!({"roles": "admin, bil\u{0}ling"})),
        user(json!({enterprise: {"manager": "\u{0}"}})),
        user(json!({"externalId": "\u{0}"})),
    ] {
        let err = prepare_create(&ctx, &body).unwrap_err();
        assert_eq!(err.scim_type, Some(ScimType::InvalidValue), "{body}");
    }
    for ops in [
        json!([{"op": "replace", "path": "displayName", "value": "\u{0}"}]),
        json!([{"op": "replace", "path": "externalId", "value": "a\u{0}"}]),
        json!([{"op": "add", "value": {"externalId": "\u{0}"}}]),
    ] {
        let err = patch_user(user(json!({})), ops.clone()).unwrap_err();
        assert_eq!(err.scim_type, Some(ScimType::InvalidValue), "{ops}");
    }
    let gctx = Ctx::new(&reg, "Group").unwrap();
    let group = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
        "displayName": "g", "members": [{"value": "id\u{0}"}]});
    let err = prepare_create(&gctx, &group).unwrap_err();
    assert_eq!(err.scim_type, Some(ScimType::InvalidValue));
}

#[test]
fn a_cursor_holding_nul_is_not_one_this_server_issued() {
    use crate::query::{decode_cursor, encode_cursor};
    use crate::store::CursorKey;
    let key = |id: &str| CursorKey {
        created: "2026-01-01T00:00:00.000000Z".into(),
        id: id.into(),
        backward: false,
        key: None,
    };
    assert_eq!(
        decode_cursor(&encode_cursor(&key("id1"))).unwrap().id,
        "id1"
    );
    let err = decode_cursor(&encode_cursor(&key("id\u{0}1"))).unwrap_err();
    assert_eq!(err.scim_type, Some(ScimType::InvalidCursor));
}

#[test]
fn add_of_many_values_merges_them_as_add_of_a_few_does() {
    // Past a few values the merge compares canonical texts in a set: the same answer,
    // whatever the key order of equal elements.
    let existing: Vec<Value> = (0..40)
        .map(|i| json!({"value": format!("e{i}@x.com"), "type": "work"}))
        .collect();
    let mut sent: Vec<Value> = (30..60)
        .map(|i| json!({"type": "work", "value": format!("e{i}@x.com")}))
        .collect();
    sent.push(json!({"type": "work", "value": "e59@x.com"}));
    let out = patch_user(
        user(json!({"emails": existing})),
        json!([{"op": "add", "path": "emails", "value": sent}]),
    )
    .unwrap();
    let values: Vec<&str> = out["emails"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["value"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..60).map(|i| format!("e{i}@x.com")).collect();
    assert_eq!(values, expected);
    // A different value of an element's sub-attribute is a different element.
    let out = patch_user(
        user(json!({"emails": [{"value": "a@x.com", "type": "work"}]})),
        json!([{"op": "add", "path": "emails", "value": (0..20).map(|_| json!({"value": "a@x.com", "type": "home"})).collect::<Vec<_>>()}]),
    )
    .unwrap();
    assert_eq!(out["emails"].as_array().unwrap().len(), 2);
}

#[test]
fn a_multi_valued_attribute_holds_at_most_max_values() {
    // Bounds the work of every PATCH of the resource: each value-path operation visits the
    // attribute's values.
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap().with_max_values(3);
    let emails = |n: usize| {
        (0..n)
            .map(|i| json!({"value": format!("e{i}@x.com")}))
            .collect::<Vec<_>>()
    };
    assert!(prepare_create(&ctx, &user(json!({"emails": emails(3)}))).is_ok());
    let err = prepare_create(&ctx, &user(json!({"emails": emails(4)}))).unwrap_err();
    assert_eq!(err.scim_type, Some(ScimType::InvalidValue));
    assert!(err.detail.contains("at most 3"), "{}", err.detail);
    let rec = record(
        &ctx,
        prepare_create(&ctx, &user(json!({"emails": emails(3)}))).unwrap(),
    );
    let patch = |ops: Value| json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops});
    for ops in [
        json!([{"op": "add", "path": "emails", "value": [{"value": "new@x.com"}]}]),
        json!([{"op": "add", "path": "emails[value eq \"new@x.com\"].type", "value": "work"}]),
    ] {
        let err = prepare_patch(&ctx, &patch(ops.clone()), &rec, &Default::default()).unwrap_err();
        assert_eq!(err.scim_type, Some(ScimType::InvalidValue), "{ops}");
    }
    // Re-adding values already held does not count twice.
    let same = json!([{"op": "add", "path": "emails", "value": emails(3)}]);
    assert!(prepare_patch(&ctx, &patch(same), &rec, &Default::default()).is_ok());
    // Group members are rows of their own, not values of the document.
    let gctx = Ctx::new(&reg, "Group").unwrap().with_max_values(3);
    let group = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
        "displayName": "g", "members": (0..10).map(|i| json!({"value": format!("u{i}")})).collect::<Vec<_>>()});
    assert!(prepare_create(&gctx, &group).is_ok());
}

#[test]
fn a_patch_with_more_operations_than_allowed_is_413() {
    use crate::patch::check_operation_count;
    let ops = |n: usize| {
        json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "operations": (0..n).map(|_| json!({"op": "remove", "path": "title"})).collect::<Vec<_>>()})
    };
    assert!(check_operation_count(&ops(2), 2).is_ok());
    let err = check_operation_count(&ops(3), 2).unwrap_err();
    assert_eq!(err.status, 413);
    assert!(err.detail.contains("at most 2"), "{}", err.detail);
    // Not a PatchOp body: left to prepare_patch to refuse.
    assert!(check_operation_count(&json!([1, 2, 3]), 2).is_ok());
}

#[test]
fn the_index_fingerprint_changes_with_what_index_rows_depend_on() {
    use crate::index::fingerprint;
    use crate::schema::Schema;
    let ext = |case_exact: bool, ty: &str, description: &str| -> Schema {
        serde_json::from_value(json!({"id": "urn:example:ext:1.0:User", "name": "X",
            "description": description, "attributes": [{"name": "badge", "type": ty,
            "multiValued": false, "mutability": "readWrite", "returned": "default",
            "caseExact": case_exact}]}))
        .unwrap()
    };
    let with = |s: Schema| fingerprint(&registry().with_extension("User", s, false).unwrap());
    let base = with(ext(false, "string", "one"));
    // the same schemas give the same fingerprint; a description does not change rows
    assert_eq!(base, with(ext(false, "string", "another")));
    assert_eq!(fingerprint(&registry()), fingerprint(&registry()));
    // an extension added, an attribute's caseExact or type changed: other rows
    assert_ne!(base, fingerprint(&registry()));
    assert_ne!(base, with(ext(true, "string", "one")));
    assert_ne!(base, with(ext(false, "integer", "one")));
    assert!(
        base.starts_with(&format!("{}:", crate::index::INDEX_FORMAT)),
        "{base}"
    );
    // the rules' version is read back from a fingerprint (an upgrade, not other schemas)
    assert_eq!(
        crate::index::fingerprint_format(&base),
        Some(crate::index::INDEX_FORMAT)
    );
    assert_eq!(
        crate::index::fingerprint_format("1:4745fbe5a70fc23a"),
        Some(1)
    );
    assert_eq!(crate::index::fingerprint_format("not one"), None);
}

/// An element of a complex attribute is its sub-attributes' rows: the attribute itself has
/// no row, whatever its elements hold (`emails pr` tests the sub-attributes' rows).
/// `userName` and `displayName` have none either: their own columns answer for them.
#[test]
fn complex_attributes_have_rows_only_for_their_sub_attributes() {
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    let doc = json!({"userName": "a", "displayName": "A", "title": "T", "name": {"formatted": ""},
        "emails": [{"type": "other"}, {"value": "x@example.com", "primary": true}]});
    let rows = crate::index::index_rows(&ctx, doc.as_object().unwrap());
    let mut paths: Vec<(&str, i64)> = rows.iter().map(|r| (r.path.as_str(), r.ordinal)).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            ("emails.primary", 1),
            ("emails.type", 0),
            ("emails.value", 1),
            ("name.formatted", 0),
            ("title", 0)
        ]
    );
}

#[test]
fn a_patch_carries_the_index_rows_of_the_document_it_replaces() {
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    let cur = record(
        &ctx,
        prepare_create(
            &ctx,
            &user(json!({"emails": [{"value": "A@x.org", "type": "work"}]})),
        )
        .unwrap(),
    );
    let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "b@x.org"}]});
    let w = prepare_patch(&ctx, &body, &cur, &scim_filter::Limits::default()).unwrap();
    assert_eq!(
        w.previous_values,
        Some(crate::index::index_rows(&ctx, &cur.data))
    );
    assert_ne!(w.previous_values.as_ref(), Some(&w.values));
    let put = crate::resource::prepare_replace(&ctx, &user(json!({})), &cur).unwrap();
    assert_eq!(put.previous_values, w.previous_values);
    assert_eq!(
        prepare_create(&ctx, &user(json!({})))
            .unwrap()
            .previous_values,
        None
    );
}

#[test]
fn unique_display_names_make_a_groups_name_its_unique_key() {
    let group = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
        "displayName": "Sales EMEA"});
    // RFC 7643: a Group's displayName is not unique, so it is no unique key by default.
    let reg = registry();
    let w = prepare_create(&Ctx::new(&reg, "Group").unwrap(), &group).unwrap();
    assert_eq!((w.keys.unique_name, w.keys.unique_attribute), (None, None));
    assert_eq!(w.keys.display_name.as_deref(), Some("sales emea"));

    let reg = registry().with_unique_display_names("Group").unwrap();
    let ctx = Ctx::new(&reg, "Group").unwrap();
    let w = prepare_create(&ctx, &group).unwrap();
    assert_eq!(w.keys.unique_name.as_deref(), Some("sales emea"));
    assert_eq!(w.keys.unique_attribute, Some("displayName"));
    let core = reg.core_schema(ctx.rt).unwrap();
    assert_eq!(
        core.attribute("displayname").unwrap().uniqueness,
        Some(Uniqueness::Server),
        "published in /Schemas"
    );
    // Users keep their userName as the unique key.
    let u = prepare_create(&Ctx::new(&reg, "User").unwrap(), &user(json!({}))).unwrap();
    assert_eq!(u.keys.unique_name.as_deref(), Some("bjensen"));
    assert_eq!(u.keys.unique_attribute, Some("userName"));

    let refused = |rt: &str| registry().with_unique_display_names(rt).unwrap_err().detail;
    assert!(
        refused("User").contains("unique name already"),
        "{}",
        refused("User")
    );
    assert!(refused("Device").contains("no such resource type"));
    let twice = reg.with_unique_display_names("Group").unwrap_err().detail;
    assert!(twice.contains("unique name already"), "{twice}");
}

/// `sortBy` on a multi-valued complex attribute names the path of its `primary` flag, so the
/// store sorts by the primary element's value (RFC 7644 section 3.4.2.3); other attributes
/// name none.
#[test]
fn sorting_a_multi_valued_attribute_prefers_its_primary_element() {
    use crate::query::plan_sort;
    use crate::store::{SortTarget, ValueKind};
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    let target = |sort_by: &str| {
        plan_sort(&ctx, Some(sort_by), None)
            .unwrap()
            .unwrap()
            .target
    };
    let value = |path: &str, kind, primary: Option<&str>| SortTarget::Value {
        path: path.into(),
        kind,
        primary: primary.map(String::from),
    };
    for sort_by in [
        "emails",
        "EMAILS.value",
        "urn:ietf:params:scim:schemas:core:2.0:User:emails",
    ] {
        assert_eq!(
            target(sort_by),
            value("emails.value", ValueKind::Str, Some("emails.primary")),
            "{sort_by}"
        );
    }
    assert_eq!(
        target("addresses.locality"),
        value(
            "addresses.locality",
            ValueKind::Str,
            Some("addresses.primary")
        )
    );
    assert_eq!(target("title"), value("title", ValueKind::Str, None));
    assert_eq!(
        target("name.familyName"),
        value("name.familyname", ValueKind::Str, None)
    );
    let manager = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager";
    assert_eq!(
        target(manager),
        value(
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:user:manager.value",
            ValueKind::Str,
            None
        )
    );
}

#[test]
fn an_element_filter_is_found_by_its_most_selective_test() {
    use crate::store::{CompareOp, ElementFilter, ValueTest};
    let test = |path: &str, op: CompareOp, v: &str| ElementFilter::Test {
        path: path.into(),
        test: ValueTest::Str(op, v.into()),
    };
    let anchor = |terms: Vec<ElementFilter>| {
        ElementFilter::And(terms)
            .anchor()
            .map(|(path, t)| (path.to_string(), t.clone()))
    };
    let work = || test("emails.type", CompareOp::Eq, "work");
    // Entra ID's lookup: the value, not the type.
    assert_eq!(
        anchor(vec![work(), test("emails.value", CompareOp::Eq, "a@x")]),
        Some((
            "emails.value".into(),
            ValueTest::Str(CompareOp::Eq, "a@x".into())
        ))
    );
    // A prefix of the value is rarer than a type.
    assert_eq!(
        anchor(vec![work(), test("emails.value", CompareOp::Sw, "ann")]),
        Some((
            "emails.value".into(),
            ValueTest::Str(CompareOp::Sw, "ann".into())
        ))
    );
    // A type is still better than a flag.
    let flag = ElementFilter::Test {
        path: "emails.primary".into(),
        test: ValueTest::Bool(true),
    };
    assert_eq!(
        anchor(vec![flag, work()]),
        Some((
            "emails.type".into(),
            ValueTest::Str(CompareOp::Eq, "work".into())
        ))
    );
}

#[test]
fn strings_longer_than_an_index_key_can_hold_are_refused() {
    use crate::resource::MAX_STRING_BYTES;
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    let enterprise = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    let long = "é".repeat(MAX_STRING_BYTES / 2 + 1); // two bytes each: one byte too many
    let most = "x".repeat(MAX_STRING_BYTES);
    for body in [
        user(json!({"title": long})),
        user(json!({"externalId": long})),
        user(json!({"emails": [{"value": long}]})),
        user(json!({enterprise: {"department": long}})),
        json!({"schemas": [crate::urns::USER], "userName": long}),
    ] {
        let err = prepare_create(&ctx, &body).unwrap_err();
        assert_eq!(err.scim_type, Some(ScimType::InvalidValue), "{body}");
    }
    assert!(prepare_create(&ctx, &user(json!({"title": most, "externalId": most}))).is_ok());
    let err = patch_user(
        user(json!({})),
        json!([{"op": "replace", "path": "nickName", "value": long}]),
    )
    .unwrap_err();
    assert_eq!(err.scim_type, Some(ScimType::InvalidValue));
}

/// `remove` with a value list on a multi-valued attribute drops exactly the values named
/// (matched on `value`), whether the lists are small or long enough to be compared through a
/// set; values not held are ignored.
#[test]
fn remove_with_a_value_list_drops_exactly_those_values_at_any_size() {
    for (held, named) in [(5usize, 3usize), (300, 200)] {
        let emails: Vec<Value> = (0..held)
            .map(|i| json!({"value": format!("e{i}@x.io"), "type": "work"}))
            .collect();
        // Every other held value, and as many that are not held.
        let drop: Vec<Value> = (0..named)
            .map(|i| match i % 2 {
                0 => json!({"value": format!("e{i}@x.io")}),
                _ => json!({"value": format!("absent{i}@x.io")}),
            })
            .collect();
        let out = patch_user(
            user(json!({"emails": emails})),
            json!([{"op": "remove", "path": "emails", "value": drop}]),
        )
        .unwrap();
        let left: Vec<&str> = out["emails"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["value"].as_str().unwrap())
            .collect();
        let expected: Vec<String> = (0..held)
            .filter(|i| !(i % 2 == 0 && *i < named))
            .map(|i| format!("e{i}@x.io"))
            .collect();
        assert_eq!(left, expected, "{held} held, {named} named");
    }
}

/// Repeating names in `attributes` / `excludedAttributes` changes nothing in what is shown.
#[test]
fn repeated_attribute_names_project_as_one() {
    let reg = registry();
    let ctx = Ctx::new(&reg, "User").unwrap();
    let w = prepare_create(&ctx, &user(json!({"title": "T", "name": {"givenName": "B", "familyName": "J"}, "emails": [{"value": "b@x", "type": "work"}]}))).unwrap();
    let rec = record(&ctx, w);
    let shown = |a: Option<&str>, e: Option<&str>| projected(&ctx, &rec, a, e);
    let names = "emails.value,name.givenName";
    let repeated = vec![names; 500].join(",");
    assert_eq!(shown(Some(&repeated), None), shown(Some(names), None));
    assert_eq!(shown(None, Some(&repeated)), shown(None, Some(names)));
    assert!(shown(Some(names), None)["title"].is_null());
    assert_eq!(shown(None, Some(names))["title"], json!("T"));
}
