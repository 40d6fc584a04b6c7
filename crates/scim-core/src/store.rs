//! The storage interface: what a backend must do, in SCIM-free terms.
//!
//! Core decides *what* to write (validated document, index keys, membership changes); the store
//! decides *how*, and guarantees that each call is one transaction.

pub use scim_filter::CompareOp;
use serde_json::{Map, Value};

use crate::error::{ScimError, StoreError};

/// A resource as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceRecord {
    /// server-issued id
    pub id: String,
    /// resource type id (`User`, `Group`)
    pub resource_type: String,
    /// version counter, starts at 1, +1 on every change
    pub version: i64,
    /// RFC 3339 UTC timestamp
    pub created: String,
    /// RFC 3339 UTC timestamp
    pub last_modified: String,
    /// client-issued id
    pub external_id: Option<String>,
    /// attributes other than `id`, `externalId`, `meta`, `members` and `groups`, under their
    /// canonical names; extension attributes under the extension URN
    pub data: Document,
    /// direct members (groups only), when asked for
    pub members: Option<Vec<MemberRef>>,
    /// groups that have this resource as a direct member, when asked for
    pub groups: Option<Vec<MemberRef>>,
}

/// A resource's attributes (see [`ResourceRecord::data`]): a JSON object, read as a
/// [`Map`] through `Deref`.
///
/// A store that reads the document as JSON text hands it over as that text
/// ([`Document::from_stored`]); the text is parsed into a [`Map`] only when something looks
/// at the attributes, and a record that is only rendered is written out from the text
/// ([`crate::render::Rendered`]) without building one. Changing the attributes
/// (`DerefMut`) drops the text.
#[derive(Clone, Default)]
pub struct Document {
    /// the stored JSON text, while it still says what `map` holds (or will hold)
    text: Option<String>,
    map: std::sync::OnceLock<Map<String, Value>>,
}

impl Document {
    /// A document from the JSON text a store read. Checks that the text is one JSON object
    /// (without building it), so that a corrupt document is an error here and not an empty
    /// resource later.
    pub fn from_stored(text: String) -> Result<Self, serde_json::Error> {
        serde_json::from_str::<IgnoredObject>(&text)?;
        Ok(Document {
            text: Some(text),
            map: std::sync::OnceLock::new(),
        })
    }

    /// The stored JSON text, if the document still is exactly that text.
    pub fn stored_text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// The attributes as a map of their own (parsed straight from the text if nothing has
    /// parsed it yet: a clone of an unread document is then one parse, not a parse and a copy).
    pub fn into_map(self) -> Map<String, Value> {
        match self.map.into_inner() {
            Some(map) => map,
            None => parse_text(self.text.as_deref()),
        }
    }

    fn parse(&self) -> &Map<String, Value> {
        self.map.get_or_init(|| parse_text(self.text.as_deref()))
    }
}

/// The map of a stored text (checked to be an object by [`Document::from_stored`]).
fn parse_text(text: Option<&str>) -> Map<String, Value> {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

/// Accepts any JSON object and keeps nothing of it.
struct IgnoredObject;

impl<'de> serde::Deserialize<'de> for IgnoredObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(IgnoredObject)
    }
}

impl<'de> serde::de::Visitor<'de> for IgnoredObject {
    type Value = IgnoredObject;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self, A::Error> {
        while m
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(IgnoredObject)
    }
}

impl From<Map<String, Value>> for Document {
    fn from(map: Map<String, Value>) -> Self {
        Document {
            text: None,
            map: map.into(),
        }
    }
}

impl std::ops::Deref for Document {
    type Target = Map<String, Value>;
    fn deref(&self) -> &Map<String, Value> {
        self.parse()
    }
}

impl std::ops::DerefMut for Document {
    fn deref_mut(&mut self) -> &mut Map<String, Value> {
        let map = std::mem::take(&mut self.map)
            .into_inner()
            .unwrap_or_else(|| parse_text(self.text.as_deref()));
        self.text = None;
        self.map = map.into();
        match self.map.get_mut() {
            Some(m) => m,
            None => unreachable!("set just above"),
        }
    }
}

impl PartialEq for Document {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// One end of a membership, with the other side's display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRef {
    /// id of the member (or of the group, for `groups`)
    pub id: String,
    /// its resource type
    pub resource_type: String,
    /// its display name (`displayName`, else `userName`)
    pub display: Option<String>,
    /// in a resource's `groups` only: the resource belongs to this group through a nested
    /// group, not as a direct member (`type` `indirect`, RFC 7643 section 4.1.2)
    pub indirect: bool,
}

/// A change to a group's membership, applied as a set operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberOp {
    /// add these ids (already-present ones are ignored)
    Add(Vec<String>),
    /// remove these ids (absent ones are ignored)
    Remove(Vec<String>),
    /// remove every member
    RemoveAll,
}

/// Values the store indexes, computed by core from the document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexKeys {
    /// the case-folded name that is unique per tenant and resource type: a user's
    /// `userName`, and the `displayName` of a type whose schema declares it unique (see
    /// [`SchemaRegistry::with_unique_display_names`](crate::schema::SchemaRegistry::with_unique_display_names));
    /// `None` for types without such a name
    pub unique_name: Option<String>,
    /// the attribute `unique_name` was read from (`userName`, `displayName`), so that a store
    /// refusing a taken name can say which one
    pub unique_attribute: Option<&'static str>,
    /// case-folded `displayName`
    pub display_name: Option<String>,
    /// what other resources show for this one (`members.display`, `groups.display`)
    pub display: Option<String>,
}

/// What to do with member ids that name no resource of the tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnknownMembers {
    /// Skip them and add the others (tolerant; what most identity providers expect).
    #[default]
    Ignore,
    /// Fail the whole write with an error naming them.
    Reject,
}

/// What a write does to a secret (the write-only `password`).
#[derive(Clone, Default, PartialEq, Eq)]
pub enum SecretChange {
    /// leave it as it is
    #[default]
    Keep,
    /// set it (core hands over the clear text; the caller stores only a hash of it)
    Set(String),
    /// remove it
    Clear,
}

impl std::fmt::Debug for SecretChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.write_str(match self {
            SecretChange::Keep => "Keep",
            SecretChange::Set(_) => "Set(***)",
            SecretChange::Clear => "Clear",
        })
    }
}

/// A validated write.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceWrite {
    /// the new document
    pub data: Map<String, Value>,
    /// the new externalId
    pub external_id: Option<String>,
    /// index columns
    pub keys: IndexKeys,
    /// membership changes, in order
    pub member_ops: Vec<MemberOp>,
    /// policy for member ids that do not exist
    pub unknown_members: UnknownMembers,
    /// the password: by the time a store sees `Set`, it must hold a hash
    pub password: SecretChange,
    /// the attribute-value index of `data` (replaces the resource's previous rows)
    pub values: Vec<crate::index::IndexRow>,
    /// for an update: the index rows of the document it was computed from, derived by the
    /// same schemas as `values`. A store whose rows were built with the same
    /// [`crate::index::fingerprint`] may write the difference between the two instead of
    /// reading the stored rows; `None` (a create, or a caller that did not derive them) makes
    /// it read them.
    pub previous_values: Option<Vec<crate::index::IndexRow>>,
}

/// Which derived parts to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Include {
    /// read a group's members
    pub members: bool,
    /// read the groups a resource belongs to
    pub groups: bool,
    /// with `members`: read them only for a group that has at most this many, and leave a
    /// larger group's `members` unread (`None`), without reading past the limit. Writes use it
    /// so that a membership change on a large group never reads the whole group back.
    pub member_limit: Option<u32>,
}

/// A field the store can filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IndexedField {
    /// `id` (exact)
    Id,
    /// `externalId` (exact)
    ExternalId,
    /// `userName` (folded)
    UserName,
    /// `displayName` (folded)
    DisplayName,
}

/// A test on one indexed value (see [`crate::index`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ValueTest {
    /// text comparison; the value is already folded (caseExact false) or normalized
    /// (dateTime). Operators: eq, gt, ge, lt, le, co, sw, ew.
    Str(CompareOp, String),
    /// number comparison: eq, gt, ge, lt, le
    Num(CompareOp, f64),
    /// boolean equality
    Bool(bool),
    /// a non-empty value, held in the column of this kind
    Present(ValueKind),
}

/// A filter on the elements of one multi-valued (or complex) attribute: all its tests
/// must hold on the same element.
#[derive(Debug, Clone, PartialEq)]
pub enum ElementFilter {
    /// a sub-attribute of the element passes the test
    Test {
        /// index path of the sub-attribute
        path: String,
        /// the test
        test: ValueTest,
    },
    /// all of
    And(Vec<ElementFilter>),
    /// any of
    Or(Vec<ElementFilter>),
    /// not
    Not(Box<ElementFilter>),
}

/// Columns of the resource row that filters can compare directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// `id`
    Id,
    /// `externalId`
    ExternalId,
    /// folded `userName`
    UserName,
    /// folded `displayName`
    DisplayName,
    /// `meta.created` (normalized text)
    Created,
    /// `meta.lastModified` (normalized text)
    LastModified,
    /// the resource type's name (`User`, `Group`): a member's `type`
    ResourceType,
    /// folded, what other resources show for this one (`displayName`, else `userName`): a
    /// member's `display`; no index orders it
    Display,
    /// inside a [`StoreFilter::Linked`] on [`LinkSide::Groups`] only: the type of the
    /// membership being tested, `direct` or `indirect` (a User's `groups.type`); a property of
    /// the link, not of either resource. Compared with `eq` only.
    MembershipType,
}

/// A filter in terms the store understands; built by [`crate::query::plan_filter`].
#[derive(Debug, Clone, PartialEq)]
pub enum StoreFilter {
    /// matches everything
    All,
    /// matches nothing
    Nothing,
    /// `field = value` (value already folded where the field is folded); the fast path
    Eq(IndexedField, String),
    /// a column compared with any operator (text comparison, LIKE for co/sw/ew)
    Column(Column, CompareOp, String),
    /// some value at an index path passes the test
    Value {
        /// index path
        path: String,
        /// the test
        test: ValueTest,
    },
    /// some element of an attribute passes an element filter (`emails pr`, some element
    /// exists, is the empty `ElementFilter::And`)
    Element {
        /// index paths of the attribute's sub-attributes: an element is the rows of one
        /// ordinal at these paths (an element filter without an indexable test visits them)
        paths: Vec<String>,
        /// tests on one element
        filter: ElementFilter,
    },
    /// resources linked by a membership to some resource that passes `filter`, a filter on the
    /// linked resource's own row (`Column`, `All`, `Nothing` and their `And`, `Or`, `Not`):
    /// `members eq "x"` is the groups with the direct member `x` (`Column(Id, Eq, x)`),
    /// `groups.display eq "x"` the resources in a group named `x`, directly or through groups
    /// nested in it (RFC 7643 section 4.1.2), `members pr` the groups with a member. On the
    /// groups side, `Column(MembershipType, Eq, "direct" | "indirect")` tests the link itself.
    Linked {
        /// which side of the membership the linked resource is
        side: LinkSide,
        /// the linked resource's type when it has one (a User's groups are Groups)
        linked_type: Option<String>,
        /// the test on the linked resource
        filter: Box<StoreFilter>,
    },
    /// all of
    And(Vec<StoreFilter>),
    /// any of
    Or(Vec<StoreFilter>),
    /// not
    Not(Box<StoreFilter>),
}

/// A side of a membership, seen from the resource a [`StoreFilter::Linked`] selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkSide {
    /// the resource's groups (a User's `groups`)
    Groups,
    /// the resource's members (a Group's `members`)
    Members,
}

/// What a sort key reads.
#[derive(Debug, Clone, PartialEq)]
pub enum SortTarget {
    /// a column of the resource row
    Column(Column),
    /// the value at an index path, from the typed column that holds it: the value of the
    /// element flagged `primary` when `primary` names that flag's path and an element is
    /// flagged, else the first value (RFC 7644 section 3.4.2.3)
    Value {
        /// index path
        path: String,
        /// which typed column holds the values
        kind: ValueKind,
        /// index path of the `primary` flag of the multi-valued complex attribute the path is
        /// in (`emails.primary` for `emails.value`); `None` for other attributes
        primary: Option<String>,
    },
}

/// The typed column of an index row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// `str_value`
    Str,
    /// `num_value`
    Num,
    /// `bool_value`
    Bool,
}

/// `sortBy` / `sortOrder`, planned.
#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    /// what to sort on
    pub target: SortTarget,
    /// `sortOrder=descending`
    pub descending: bool,
}

/// A page request.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    /// what to match
    pub filter: StoreFilter,
    /// 1-based index of the first result
    pub start_index: u64,
    /// maximum results (0 = only count)
    pub count: u64,
    /// derived parts to read
    pub include: Include,
    /// order (after it, and without it, resources are ordered by creation)
    pub sort: Option<SortKey>,
    /// cursor paging: only resources after (or, backward, before) this position in
    /// creation order
    pub after: Option<CursorKey>,
}

/// A position in creation order, for cursor paging (RFC 9865).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorKey {
    /// `created` of the last resource seen
    pub created: String,
    /// `id` of the last resource seen
    pub id: String,
    /// the page before this position (`previousCursor`) instead of after it
    pub backward: bool,
    /// for a walk sorted by `userName`: the folded `userName` of the last resource seen (the
    /// position is then in `userName` order, which is unique)
    pub key: Option<String>,
}

/// A page of results.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// matches in total
    pub total: u64,
    /// this page, in a stable order
    pub resources: Vec<ResourceRecord>,
}

impl ElementFilter {
    /// The test by which an index finds the elements this filter matches: an indexable test
    /// (equality, prefix, range, presence) that every matching element passes, that is the
    /// filter itself or a term of its top-level `and`. Equality on a `value` sub-attribute is
    /// preferred (Entra ID's `emails[type eq "work"].value eq "x"`: `type` matches most
    /// elements, `value` one), then other equalities, then prefixes and ranges, then any test
    /// of a `type` (a handful of canonical values, each held by many elements: `emails[type
    /// eq "work" and value sw "ann"]` is found by its prefix), and flags and presence last.
    /// `None` for filters without one (`or`, `not`, `co`, `ew`): their elements are found by a
    /// scan.
    pub fn anchor(&self) -> Option<(&str, &ValueTest)> {
        self.anchors().into_iter().next()
    }

    /// Every test that could be the [`anchor`](Self::anchor), the preferred first (stable:
    /// tests of one rank in the filter's order). A store that can count what each matches
    /// may take the one that matches least.
    pub fn anchors(&self) -> Vec<(&str, &ValueTest)> {
        let rank = |path: &str, test: &ValueTest| match test {
            ValueTest::Str(CompareOp::Eq, _) if path.ends_with(".value") => Some(0),
            ValueTest::Str(
                CompareOp::Eq
                | CompareOp::Sw
                | CompareOp::Gt
                | CompareOp::Ge
                | CompareOp::Lt
                | CompareOp::Le,
                _,
            ) if path.ends_with(".type") => Some(3),
            ValueTest::Str(CompareOp::Eq, _) => Some(1),
            ValueTest::Str(
                CompareOp::Sw | CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le,
                _,
            ) => Some(2),
            ValueTest::Num(op, _) if *op != CompareOp::Ne => Some(2),
            ValueTest::Bool(_) | ValueTest::Present(_) => Some(4),
            _ => None,
        };
        let terms = match self {
            ElementFilter::And(terms) => terms.as_slice(),
            single => std::slice::from_ref(single),
        };
        let mut ranked: Vec<(u8, &str, &ValueTest)> = terms
            .iter()
            .filter_map(|t| match t {
                ElementFilter::Test { path, test } => {
                    rank(path, test).map(|r| (r, path.as_str(), test))
                }
                _ => None,
            })
            .collect();
        ranked.sort_by_key(|(r, _, _)| *r);
        ranked
            .into_iter()
            .map(|(_, path, test)| (path, test))
            .collect()
    }
}

impl StoreFilter {
    /// How many scans the filter costs: terms that no index narrows (`co` and `ew`, each read
    /// every value of its attribute; `not`, which reads every resource; a value filter without
    /// an [`ElementFilter::anchor`], which reads every element). Everything else is an index
    /// probe or range.
    pub fn scans(&self) -> usize {
        match self {
            StoreFilter::Column(_, CompareOp::Co | CompareOp::Ew, _) => 1,
            // Both read every membership of the tenant (a member's display has no index; a
            // link's type is known only once the nesting above it is walked).
            StoreFilter::Column(Column::Display | Column::MembershipType, _, _) => 1,
            StoreFilter::Value {
                test: ValueTest::Str(CompareOp::Co | CompareOp::Ew, _),
                ..
            } => 1,
            StoreFilter::Element { filter, .. } => usize::from(filter.anchor().is_none()),
            StoreFilter::And(terms) | StoreFilter::Or(terms) => {
                terms.iter().map(StoreFilter::scans).sum()
            }
            StoreFilter::Not(inner) => 1 + inner.scans(),
            StoreFilter::Linked { filter, .. } => filter.scans(),
            _ => 0,
        }
    }

    /// Whether the filter can match at most one resource: it requires `id` or `userName` (both
    /// unique) to equal a value. Such a read costs a few index probes however much is stored.
    pub fn pins_one_row(&self) -> bool {
        match self {
            StoreFilter::Eq(IndexedField::Id | IndexedField::UserName, _) => true,
            StoreFilter::And(terms) => terms.iter().any(StoreFilter::pins_one_row),
            _ => false,
        }
    }
}

/// A reservation for reads on the calling thread, from [`ResourceStore::reserve_inline`]:
/// while it lives, that thread's reads through the store use what it reserved (for a
/// database: one connection) and never wait for it. Dropping it gives the reservation back.
pub struct InlineReads {
    _held: Box<dyn std::any::Any>,
}

impl InlineReads {
    /// Wraps what a store holds for the reservation (released when dropped).
    pub fn new(held: Box<dyn std::any::Any>) -> Self {
        InlineReads { _held: held }
    }
}

impl std::fmt::Debug for InlineReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InlineReads")
    }
}

/// Callback of an update: gets the current resource, returns the write. A store may call it
/// more than once for one update (after losing a race, or to prepare the write before its
/// transaction from the last committed version); only the write computed from the version it
/// finally changes is made, so the callback must not have effects of its own.
pub type UpdateFn<'a> = dyn FnMut(&ResourceRecord) -> Result<ResourceWrite, ScimError> + 'a;

/// Persistent storage of SCIM resources. Every method is one transaction.
pub trait ResourceStore: Send + Sync {
    /// Inserts a new resource (version 1). Fails with [`StoreError::Conflict`] on a duplicate
    /// `userName` and with a [`ScimError`] naming unknown member ids.
    fn create(
        &self,
        tenant: &str,
        resource_type: &str,
        id: &str,
        now: &str,
        write: ResourceWrite,
        include: Include,
    ) -> Result<ResourceRecord, StoreError>;

    /// Reads one resource.
    fn get(
        &self,
        tenant: &str,
        resource_type: &str,
        id: &str,
        include: Include,
    ) -> Result<ResourceRecord, StoreError>;

    /// Lists resources in a stable order.
    fn list(
        &self,
        tenant: &str,
        resource_type: &str,
        query: &ListQuery,
    ) -> Result<Page, StoreError>;

    /// Reads `what` with `include` and, where `include.members` asks for them, each group's
    /// members in pages of at most `page_size` (id order), all from one snapshot of the store,
    /// so that the members shown belong to the version shown, and without holding more than a
    /// page of members at a time. `visit` gets the [`ReadPart::Page`] first (members unset;
    /// for [`PagedRead::One`], the one resource); then, when members are asked for, for each
    /// resource of the page in order a [`ReadPart::Resource`] followed by its members as
    /// [`ReadPart::Members`] parts. Its answer ([`Visit`]) goes on, skips the rest of the
    /// current resource's members, or ends the read. `include.member_limit` is ignored.
    ///
    /// The default reads everything with [`get`](Self::get) or [`list`](Self::list) and
    /// hands it over in pages: correct, but it holds the whole member lists.
    fn read_paged(
        &self,
        tenant: &str,
        resource_type: &str,
        what: PagedRead<'_>,
        include: Include,
        page_size: usize,
        visit: &mut dyn FnMut(ReadPart<'_>) -> Visit,
    ) -> Result<(), StoreError> {
        let include = Include {
            member_limit: None,
            ..include
        };
        let mut page = match what {
            PagedRead::One(id) => {
                let rec = self.get(tenant, resource_type, id, include)?;
                Page {
                    total: 1,
                    resources: vec![rec],
                }
            }
            PagedRead::List(query) => {
                let query = ListQuery {
                    include,
                    ..query.clone()
                };
                self.list(tenant, resource_type, &query)?
            }
        };
        let members: Vec<Vec<MemberRef>> = page
            .resources
            .iter_mut()
            .map(|r| r.members.take().unwrap_or_default())
            .collect();
        if visit(ReadPart::Page(&page)) != Visit::Continue || !include.members {
            return Ok(());
        }
        for (of, (list, rec)) in members.iter().zip(&page.resources).enumerate() {
            match visit(ReadPart::Resource(of, rec)) {
                Visit::Stop => return Ok(()),
                Visit::Skip => continue,
                Visit::Continue => {}
            }
            for chunk in list.chunks(page_size.max(1)) {
                match visit(ReadPart::Members(chunk)) {
                    Visit::Stop => return Ok(()),
                    Visit::Skip => break,
                    Visit::Continue => {}
                }
            }
        }
        Ok(())
    }

    /// Reads the resource, calls `update` with it and writes the result, atomically. When
    /// `if_match` is set and differs from the stored version, fails with
    /// [`StoreError::VersionMismatch`] without calling `update`.
    #[allow(clippy::too_many_arguments)]
    fn update(
        &self,
        tenant: &str,
        resource_type: &str,
        id: &str,
        now: &str,
        if_match: Option<i64>,
        include: Include,
        update: &mut UpdateFn<'_>,
    ) -> Result<ResourceRecord, StoreError>;

    /// [`update`](Self::update) without holding the calling thread while the write waits for
    /// the database: the update is prepared here, on the calling thread, and written by the
    /// store's own writer, which calls `done` with the outcome. For a caller that would
    /// otherwise hand the update to a thread pool, to call while it holds a reservation of
    /// [`reserve_inline`](Self::reserve_inline) (so that preparing it waits for no
    /// connection). `Err(done)`: the store does not take it now (the default); call
    /// `update` as usual.
    #[allow(clippy::too_many_arguments)]
    fn update_detached(
        &self,
        tenant: &str,
        resource_type: &str,
        id: &str,
        now: &str,
        if_match: Option<i64>,
        include: Include,
        update: &mut UpdateFn<'_>,
        done: WriteDone,
    ) -> Result<(), WriteDone> {
        let _ = (tenant, resource_type, id, now, if_match, include, update);
        Err(done)
    }

    /// [`create`](Self::create) without holding the calling thread while the write waits for
    /// the database: the store's own writer inserts it and calls `done` with the outcome.
    /// `Err` hands `write` and `done` back: the store does not take it (the default); call
    /// `create` as usual.
    #[allow(clippy::too_many_arguments)]
    fn create_detached(
        &self,
        tenant: &str,
        resource_type: &str,
        id: &str,
        now: &str,
        write: ResourceWrite,
        include: Include,
        done: WriteDone,
    ) -> Result<(), Box<(ResourceWrite, WriteDone)>> {
        let _ = (tenant, resource_type, id, now, include);
        Err(Box::new((write, done)))
    }

    /// Deletes a resource and its memberships. The groups that listed it as a member change
    /// with it: their versions move on and their `meta.lastModified` becomes `now`, as for any
    /// other change of their members.
    fn delete(
        &self,
        tenant: &str,
        resource_type: &str,
        id: &str,
        if_match: Option<i64>,
        now: &str,
    ) -> Result<(), StoreError>;

    /// Whether the store can serve now: its database answers a trivial statement within the
    /// store's connection timeout. For health checks (a load balancer taking an instance out
    /// of rotation); the default, for stores without a database, is `Ok(())`.
    fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Called by a server once it has stopped serving: leaves the store's files complete in
    /// themselves, so that they can be copied alone (an embedded database moves its
    /// write-ahead log into its main file). Every committed write is durable before this;
    /// it changes no data. The default, for stores with nothing to settle, does nothing.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Offers to run bounded reads (a resource by id, a filter that pins one row) on the
    /// calling thread, for a caller that would otherwise hand them to a thread pool: `Some`
    /// only when this store answers such reads in microseconds without waiting (an embedded
    /// database with a connection free right now). The default is `None`: hand off.
    fn reserve_inline(&self) -> Option<InlineReads> {
        None
    }

    /// A point read for the tenant of the live bearer token with this hash (see
    /// [`CredentialStore::find_token`]), with the token checked in the read's own statement:
    /// one round trip to a networked database instead of two. `include` is honoured as by
    /// [`get`](Self::get). The default, and any read a store cannot fold this way, is
    /// [`TokenRead::Unsupported`]: the caller resolves the token and reads as usual.
    fn point_read_by_token(
        &self,
        token_hash: &str,
        resource_type: &str,
        key: PointKey<'_>,
        include: Include,
    ) -> Result<TokenRead, StoreError> {
        let _ = (token_hash, resource_type, key, include);
        Ok(TokenRead::Unsupported)
    }

    /// [`create`](Self::create) for the tenant of the live bearer token with this hash (see
    /// [`CredentialStore::find_token`]), with the token checked by the create's own statement:
    /// one round trip to a networked database instead of two. Nothing is written when no live
    /// token has the hash ([`TokenCreate::NoToken`]); errors are those of `create`. The
    /// default, and any create a store cannot fold this way, is [`TokenCreate::Unsupported`]
    /// with `write` handed back: the caller resolves the token and calls `create`.
    fn create_by_token(
        &self,
        token_hash: &str,
        resource_type: &str,
        id: &str,
        now: &str,
        write: ResourceWrite,
        include: Include,
    ) -> Result<TokenCreate, StoreError> {
        let _ = (token_hash, resource_type, id, now, include);
        Ok(TokenCreate::Unsupported(Box::new(write)))
    }

    /// [`update`](Self::update) for the tenant of the live bearer token with this hash (see
    /// [`CredentialStore::find_token`]), with the token checked by the statement that reads
    /// the resource: a networked database is asked one question fewer. `update` is called
    /// only once the token is known to be live, so its errors (and a hashed password) are only
    /// ever for a caller with one. Nothing is written when no live token has the hash
    /// ([`TokenUpdate::NoToken`]); errors are those of `update`. The default, and any update a
    /// store cannot fold this way, is [`TokenUpdate::Unsupported`], before anything is read:
    /// the caller resolves the token and calls `update`.
    #[allow(clippy::too_many_arguments)]
    fn update_by_token(
        &self,
        token_hash: &str,
        resource_type: &str,
        id: &str,
        now: &str,
        if_match: Option<i64>,
        include: Include,
        update: &mut UpdateFn<'_>,
    ) -> Result<TokenUpdate, StoreError> {
        let _ = (
            token_hash,
            resource_type,
            id,
            now,
            if_match,
            include,
            update,
        );
        Ok(TokenUpdate::Unsupported)
    }

    /// [`point_read_by_token`](Self::point_read_by_token) run by the store on a thread of
    /// its own, with `done` called there with the answer, exactly once. A store that talks to
    /// a networked database may answer every read waiting at that moment with one statement,
    /// so that many concurrent point reads cost one round trip, and no caller's thread waits
    /// for any of them. `Err(done)`: the store does not take this read (the default); the
    /// caller reads as usual.
    ///
    /// Each read still sees every write committed before it was submitted.
    fn submit_point_read(&self, read: PointRead, done: PointReadDone) -> Result<(), PointReadDone> {
        let _ = read;
        Err(done)
    }
}

/// Called exactly once with the outcome of [`ResourceStore::update_detached`] or
/// [`ResourceStore::create_detached`], on a thread of the store's: it should only hand the
/// outcome on, to be finished on the caller's thread.
pub type WriteDone = Box<dyn FnOnce(Detached) + Send>;

/// The outcome of a detached write ([`WriteDone`]), finished (the resource built) by
/// [`finish`](Self::finish) wherever the caller likes.
pub struct Detached(Box<dyn FnOnce() -> Result<Option<ResourceRecord>, StoreError> + Send>);

impl Detached {
    /// An outcome that `finish` computes.
    pub fn new(
        finish: impl FnOnce() -> Result<Option<ResourceRecord>, StoreError> + Send + 'static,
    ) -> Self {
        Detached(Box::new(finish))
    }

    /// The resource as written, as [`ResourceStore::update`] or [`ResourceStore::create`]
    /// returns it. `Ok(None)` (updates only): another write of the resource came first and
    /// nothing was written; call `update`.
    pub fn finish(self) -> Result<Option<ResourceRecord>, StoreError> {
        (self.0)()
    }
}

impl std::fmt::Debug for Detached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Detached")
    }
}

/// What [`ResourceStore::read_paged`] reads.
#[derive(Debug, Clone, Copy)]
pub enum PagedRead<'a> {
    /// one resource by id ([`StoreError::NotFound`] when there is none)
    One(&'a str),
    /// a page of a list, as [`ResourceStore::list`] reads it
    List(&'a ListQuery),
}

/// A part of what [`ResourceStore::read_paged`] read, in the order it hands them over.
#[derive(Debug)]
pub enum ReadPart<'a> {
    /// the resources, without their members
    Page(&'a Page),
    /// the members of this resource, at this index of [`Page::resources`], follow
    Resource(usize, &'a ResourceRecord),
    /// the next members (at most `page_size`, in id order) of the resource last named
    Members(&'a [MemberRef]),
}

/// What a visitor of [`ResourceStore::read_paged`] wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// the next part
    Continue,
    /// no more members of the current resource (after the page: nothing more)
    Skip,
    /// nothing more
    Stop,
}

/// A point read handed to [`ResourceStore::submit_point_read`]: the arguments of
/// [`ResourceStore::point_read_by_token`], owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointRead {
    /// hash of the caller's bearer token
    pub token_hash: String,
    /// resource type id
    pub resource_type: String,
    /// what pins the resource
    pub key: PointKeyBuf,
    /// which derived parts to read
    pub include: Include,
}

/// An owned [`PointKey`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PointKeyBuf {
    /// the resource's `id`
    Id(String),
    /// a User's `userName`, already folded with [`crate::resource::fold`]
    UserName(String),
}

impl PointKeyBuf {
    /// The key borrowed.
    pub fn as_key(&self) -> PointKey<'_> {
        match self {
            PointKeyBuf::Id(v) => PointKey::Id(v),
            PointKeyBuf::UserName(v) => PointKey::UserName(v),
        }
    }
}

/// Where [`ResourceStore::submit_point_read`] delivers its answer.
pub type PointReadDone = Box<dyn FnOnce(Result<TokenRead, StoreError>) + Send>;

/// What pins a point read to at most one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointKey<'a> {
    /// the resource's `id`
    Id(&'a str),
    /// a User's `userName`, already folded with [`crate::resource::fold`]
    UserName(&'a str),
}

/// The answer of [`ResourceStore::point_read_by_token`].
#[derive(Debug)]
pub enum TokenRead {
    /// the store cannot fold the token check into this read; resolve the token and read as usual
    Unsupported,
    /// no live token has this hash (a 401)
    NoToken,
    /// the token is live; the resource, if one matched in its tenant
    Read(Option<Box<ResourceRecord>>),
}

/// The answer of [`ResourceStore::create_by_token`].
#[derive(Debug)]
pub enum TokenCreate {
    /// the store cannot fold the token check into this create: the write, untouched
    Unsupported(Box<ResourceWrite>),
    /// no live token has this hash (a 401); nothing was written
    NoToken,
    /// the token is live; the resource as created in its tenant
    Created(Box<ResourceRecord>),
}

/// The answer of [`ResourceStore::update_by_token`].
#[derive(Debug)]
pub enum TokenUpdate {
    /// the store cannot fold the token check into this update; nothing was read or written
    Unsupported,
    /// no live token has this hash (a 401); nothing was written
    NoToken,
    /// the token is live; the resource as updated in its tenant
    Updated(Box<ResourceRecord>),
}

/// A bearer token as stored: only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// token id (public, for revocation)
    pub id: String,
    /// owning tenant
    pub tenant_id: String,
    /// label
    pub name: String,
    /// RFC 3339 creation time
    pub created: String,
}

/// Tenants and their bearer tokens.
pub trait CredentialStore: Send + Sync {
    /// The tenant of a live token with this hash.
    fn find_token(&self, token_hash: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Whether any token exists at all.
    fn has_tokens(&self) -> Result<bool, StoreError>;
    /// Creates a tenant unless it exists.
    fn ensure_tenant(&self, tenant_id: &str, name: &str, now: &str) -> Result<(), StoreError>;
    /// Stores a token hash.
    fn create_token(&self, record: &TokenRecord, token_hash: &str) -> Result<(), StoreError>;
    /// Revokes a token by id; `false` when there was no such live token.
    fn revoke_token(&self, token_id: &str, now: &str) -> Result<bool, StoreError>;
    /// Live tokens.
    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// The first tenant (the one a fresh server created), if any.
    fn default_tenant(&self) -> Result<Option<String>, StoreError>;
}
