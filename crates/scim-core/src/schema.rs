//! The schema model of RFC 7643 section 7 and the registry built from the embedded JSON files.
//!
//! The JSON under `crates/scim-core/schemas/` is the only place attribute metadata is written
//! by hand; everything here reads it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::ScimError;

/// Attribute data types (RFC 7643 section 2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AttrType {
    /// UTF-8 text
    String,
    /// `true` / `false`
    Boolean,
    /// real number
    Decimal,
    /// whole number
    Integer,
    /// xsd:dateTime
    DateTime,
    /// base64 encoded bytes
    Binary,
    /// URI
    Reference,
    /// object with sub-attributes
    Complex,
}

/// Who may change an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mutability {
    /// never changed by clients
    ReadOnly,
    /// freely changed
    ReadWrite,
    /// set once, then fixed
    Immutable,
    /// set but never returned
    WriteOnly,
}

/// When an attribute is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Returned {
    /// always, even if excluded
    Always,
    /// never
    Never,
    /// unless excluded
    Default,
    /// only when asked for
    Request,
}

/// Uniqueness of values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Uniqueness {
    /// no constraint
    None,
    /// unique within the service provider (tenant)
    Server,
    /// globally unique
    Global,
}

/// An attribute definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attribute {
    /// attribute name
    pub name: String,
    /// data type
    #[serde(rename = "type")]
    pub attr_type: AttrType,
    /// multi-valued?
    pub multi_valued: bool,
    /// description
    #[serde(default)]
    pub description: String,
    /// required?
    #[serde(default)]
    pub required: bool,
    /// suggested values (never enforced)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical_values: Option<Vec<String>>,
    /// case sensitivity of string comparisons
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_exact: Option<bool>,
    /// mutability
    pub mutability: Mutability,
    /// returned
    pub returned: Returned,
    /// uniqueness
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uniqueness: Option<Uniqueness>,
    /// for references: what they point to
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_types: Option<Vec<String>>,
    /// for complex attributes
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_attributes: Option<Vec<Attribute>>,
}

impl Attribute {
    /// Whether string comparison is case sensitive.
    pub fn is_case_exact(&self) -> bool {
        self.case_exact.unwrap_or(false)
    }

    /// Sub-attributes (empty unless complex).
    pub fn subs(&self) -> &[Attribute] {
        self.sub_attributes.as_deref().unwrap_or(&[])
    }

    /// Finds a sub-attribute by name, case-insensitively.
    pub fn sub(&self, name: &str) -> Option<&Attribute> {
        self.subs()
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
    }
}

/// A schema (RFC 7643 section 7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    /// the schema URN
    pub id: String,
    /// short name
    pub name: String,
    /// description
    #[serde(default)]
    pub description: String,
    /// attribute definitions
    pub attributes: Vec<Attribute>,
}

impl Schema {
    /// Finds an attribute by name, case-insensitively.
    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
    }
}

/// An extension declared by a resource type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaExtension {
    /// the extension schema URN
    pub schema: String,
    /// whether resources must carry it
    pub required: bool,
}

/// A resource type (RFC 7643 section 6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceType {
    /// e.g. `User`
    pub id: String,
    /// e.g. `User`
    pub name: String,
    /// e.g. `/Users`
    pub endpoint: String,
    /// description
    #[serde(default)]
    pub description: String,
    /// core schema URN
    pub schema: String,
    /// extensions
    #[serde(default)]
    pub schema_extensions: Vec<SchemaExtension>,
}

/// Where an attribute was found.
#[derive(Debug, Clone, Copy)]
pub struct ResolvedAttr<'a> {
    /// the schema that defines it
    pub schema: &'a Schema,
    /// whether that schema is an extension (stored under its URN key)
    pub is_extension: bool,
    /// the top-level attribute
    pub attr: &'a Attribute,
    /// the sub-attribute, if the path named one
    pub sub: Option<&'a Attribute>,
}

/// All schemas and resource types the server knows.
#[derive(Debug, Clone)]
pub struct SchemaRegistry {
    schemas: Vec<Schema>,
    resource_types: Vec<ResourceType>,
    common: Schema,
    by_id: HashMap<String, usize>,
}

const USER_JSON: &str = include_str!("../schemas/user.json");
const GROUP_JSON: &str = include_str!("../schemas/group.json");
const ENTERPRISE_JSON: &str = include_str!("../schemas/enterprise_user.json");
const RESOURCE_TYPES_JSON: &str = include_str!("../schemas/resource_types.json");
const COMMON_JSON: &str = include_str!("../schemas/common.json");
const SPC_JSON: &str = include_str!("../schemas/service_provider_config.json");
const RESOURCE_TYPE_JSON: &str = include_str!("../schemas/resource_type.json");
const SCHEMA_JSON: &str = include_str!("../schemas/schema.json");

impl SchemaRegistry {
    /// The RFC 7643 User, Group and Enterprise User schemas with the User and Group resource types.
    pub fn builtin() -> Result<Self, ScimError> {
        let parse = |name: &str, text: &str| -> Result<Schema, ScimError> {
            serde_json::from_str(text)
                .map_err(|e| ScimError::internal(format!("schema {name}: {e}")))
        };
        let schemas = vec![
            parse("user.json", USER_JSON)?,
            parse("group.json", GROUP_JSON)?,
            parse("enterprise_user.json", ENTERPRISE_JSON)?,
            // RFC 7643 section 8.7.2: the schemas of the discovery documents themselves.
            parse("service_provider_config.json", SPC_JSON)?,
            parse("resource_type.json", RESOURCE_TYPE_JSON)?,
            parse("schema.json", SCHEMA_JSON)?,
        ];
        let resource_types: Vec<ResourceType> = serde_json::from_str(RESOURCE_TYPES_JSON)
            .map_err(|e| ScimError::internal(format!("resource_types.json: {e}")))?;
        let common = parse("common.json", COMMON_JSON)?;
        Self::new(schemas, resource_types, common)
    }

    fn new(
        schemas: Vec<Schema>,
        resource_types: Vec<ResourceType>,
        common: Schema,
    ) -> Result<Self, ScimError> {
        let by_id = schemas
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.to_ascii_lowercase(), i))
            .collect::<HashMap<_, _>>();
        for rt in &resource_types {
            for urn in
                std::iter::once(&rt.schema).chain(rt.schema_extensions.iter().map(|e| &e.schema))
            {
                if !by_id.contains_key(&urn.to_ascii_lowercase()) {
                    return Err(ScimError::internal(format!(
                        "resource type {} names unknown schema {urn}",
                        rt.id
                    )));
                }
            }
        }
        Ok(SchemaRegistry {
            schemas,
            resource_types,
            common,
            by_id,
        })
    }

    /// Adds an extension schema (RFC 7643 section 7, as `/Schemas` returns one) to the
    /// resource type `resource_type`, for attributes an identity provider sends under its own
    /// URN (Okta custom attributes, Entra ID custom extensions). Its attributes are then
    /// validated, stored, returned, indexed and filterable like the Enterprise User's, and the
    /// schema is listed by `/Schemas` and `/ResourceTypes`.
    ///
    /// Refused (with the reason): an unknown resource type; a URN that is not a URN or that a
    /// schema already has; attribute names outside RFC 7643's `ATTRNAME` grammar or repeated
    /// (case-insensitively); complex attributes without sub-attributes or with complex ones;
    /// `writeOnly` attributes (only `password` is write-only, and it is hashed, not stored);
    /// and `uniqueness` other than `none`, which the server would not enforce.
    pub fn with_extension(
        mut self,
        resource_type: &str,
        schema: Schema,
        required: bool,
    ) -> Result<Self, ScimError> {
        let bad = |why: String| ScimError::invalid_value(format!("extension {}: {why}", schema.id));
        let rt_index = self
            .resource_types
            .iter()
            .position(|r| r.id.eq_ignore_ascii_case(resource_type))
            .ok_or_else(|| bad(format!("no resource type {resource_type:?}")))?;
        let urn_ok = schema.id.len() > 4
            && schema
                .id
                .get(..4)
                .is_some_and(|p| p.eq_ignore_ascii_case("urn:"))
            && !schema.id.ends_with(':')
            && schema.id.chars().all(|c| c.is_ascii_graphic());
        if !urn_ok {
            return Err(bad("the id must be a URN (urn:…)".into()));
        }
        if self.schema(&schema.id).is_some() {
            return Err(bad("a schema with this id exists already".into()));
        }
        check_attributes(&schema.attributes, true).map_err(bad)?;
        self.by_id
            .insert(schema.id.to_ascii_lowercase(), self.schemas.len());
        self.resource_types[rt_index]
            .schema_extensions
            .push(SchemaExtension {
                schema: schema.id.clone(),
                required,
            });
        self.schemas.push(schema);
        Ok(self)
    }

    /// Declares the `displayName` of `resource_type`'s resources unique within a tenant,
    /// case-insensitively (`uniqueness: server` in `/Schemas`): a create, replace or PATCH
    /// that would give two of them the same name is then refused with 409 `uniqueness` by
    /// the store's unique index, which also makes a retried create of a group safe. RFC 7643
    /// leaves a Group's `displayName` without a constraint; a deployment whose application
    /// identifies groups by name turns this on.
    ///
    /// Refused for a resource type whose core schema has no `displayName`, or already has a
    /// unique name (a User's `userName`).
    pub fn with_unique_display_names(mut self, resource_type: &str) -> Result<Self, ScimError> {
        let bad = |why: &str| {
            ScimError::invalid_value(format!("unique display names for {resource_type:?}: {why}"))
        };
        let rt = self
            .resource_type(resource_type)
            .ok_or_else(|| bad("no such resource type"))?;
        let index = *self
            .by_id
            .get(&rt.schema.to_ascii_lowercase())
            .ok_or_else(|| bad("no core schema"))?;
        let core = &mut self.schemas[index];
        let has_unique = core
            .attributes
            .iter()
            .any(|a| a.uniqueness.is_some_and(|u| u != Uniqueness::None));
        if has_unique {
            return Err(bad("its resources have a unique name already"));
        }
        let attr = core
            .attributes
            .iter_mut()
            .find(|a| a.name == "displayName" && !a.multi_valued && a.attr_type == AttrType::String)
            .ok_or_else(|| bad("its schema has no displayName"))?;
        attr.uniqueness = Some(Uniqueness::Server);
        Ok(self)
    }

    /// All schemas.
    pub fn schemas(&self) -> &[Schema] {
        &self.schemas
    }

    /// All resource types.
    pub fn resource_types(&self) -> &[ResourceType] {
        &self.resource_types
    }

    /// The common attributes (`id`, `externalId`, `meta`) every resource has.
    pub fn common(&self) -> &Schema {
        &self.common
    }

    /// A schema by URN (case-insensitive).
    pub fn schema(&self, urn: &str) -> Option<&Schema> {
        self.by_id
            .get(&urn.to_ascii_lowercase())
            .and_then(|&i| self.schemas.get(i))
    }

    /// A resource type by id (case-insensitive).
    pub fn resource_type(&self, id: &str) -> Option<&ResourceType> {
        self.resource_types
            .iter()
            .find(|r| r.id.eq_ignore_ascii_case(id))
    }

    /// The core schema of a resource type.
    pub fn core_schema(&self, rt: &ResourceType) -> Option<&Schema> {
        self.schema(&rt.schema)
    }

    /// The extension schemas of a resource type.
    pub fn extensions<'a>(&'a self, rt: &'a ResourceType) -> impl Iterator<Item = &'a Schema> + 'a {
        rt.schema_extensions
            .iter()
            .filter_map(|e| self.schema(&e.schema))
    }

    /// The extension of `rt` whose URN is `urn` (case-insensitive).
    pub fn extension<'a>(&'a self, rt: &'a ResourceType, urn: &str) -> Option<&'a Schema> {
        self.extensions(rt).find(|s| s.id.eq_ignore_ascii_case(urn))
    }

    /// An extension attribute named without its URN (`manager`, `department`): RFC 7644
    /// section 3.10 lets clients omit URN prefixes and only asks them to qualify extension
    /// attributes (a SHOULD), and older Entra ID documents send `manager` so. A name the core
    /// schema lacks resolves to the one extension of `rt` that defines it; a name two
    /// extensions define is ambiguous and resolves to nothing.
    fn unqualified_extension_attribute<'a>(
        &'a self,
        rt: &'a ResourceType,
        name: &str,
    ) -> Option<(&'a Schema, &'a Attribute)> {
        let mut found = self
            .extensions(rt)
            .filter_map(|ext| ext.attribute(name).map(|a| (ext, a)));
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }

    /// Resolves an attribute path (optional URN, name, optional sub) for a resource type.
    /// A name without URN is looked up in the core schema, then among the common attributes,
    /// then in the extensions (see `unqualified_extension_attribute`). Returns `None`
    /// when the schema has no such attribute.
    pub fn resolve<'a>(
        &'a self,
        rt: &'a ResourceType,
        urn: Option<&str>,
        name: &str,
        sub: Option<&str>,
    ) -> Option<ResolvedAttr<'a>> {
        let core = self.core_schema(rt)?;
        let (schema, is_extension, attr) = match urn {
            Some(urn) if urn.eq_ignore_ascii_case(&core.id) => {
                let attr = core
                    .attribute(name)
                    .or_else(|| self.common.attribute(name))?;
                (core, false, attr)
            }
            Some(urn) => {
                let ext = self.extension(rt, urn)?;
                (ext, true, ext.attribute(name)?)
            }
            None => match core.attribute(name).or_else(|| self.common.attribute(name)) {
                Some(a) => (core, false, a),
                None => {
                    let (ext, attr) = self.unqualified_extension_attribute(rt, name)?;
                    (ext, true, attr)
                }
            },
        };
        let sub = match sub {
            Some(s) => Some(attr.sub(s)?),
            None => None,
        };
        Some(ResolvedAttr {
            schema,
            is_extension,
            attr,
            sub,
        })
    }
}

/// RFC 7643 section 2.1: `ATTRNAME = ALPHA *(nameChar)`, `nameChar = "-" / "_" / DIGIT / ALPHA`.
fn is_attr_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The checks of [`SchemaRegistry::with_extension`] on one level of attribute definitions.
fn check_attributes(attrs: &[Attribute], top_level: bool) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for a in attrs {
        if !is_attr_name(&a.name) {
            return Err(format!("{:?} is not an attribute name", a.name));
        }
        if !seen.insert(a.name.to_ascii_lowercase()) {
            return Err(format!("attribute {:?} is defined twice", a.name));
        }
        if a.mutability == Mutability::WriteOnly {
            return Err(format!(
                "attribute {:?}: writeOnly is not supported",
                a.name
            ));
        }
        if a.uniqueness.is_some_and(|u| u != Uniqueness::None) {
            return Err(format!(
                "attribute {:?}: uniqueness other than none is not enforced, so it is refused",
                a.name
            ));
        }
        match (a.attr_type, a.subs()) {
            (AttrType::Complex, []) => {
                return Err(format!(
                    "complex attribute {:?} has no sub-attributes",
                    a.name
                ))
            }
            (AttrType::Complex, _) if !top_level => {
                return Err(format!(
                    "sub-attribute {:?} is complex (RFC 7643 section 2.3.8)",
                    a.name
                ))
            }
            (AttrType::Complex, subs) => check_attributes(subs, false)?,
            (_, []) => {}
            (_, _) => {
                return Err(format!(
                    "attribute {:?} has sub-attributes but is not complex",
                    a.name
                ))
            }
        }
    }
    Ok(())
}
