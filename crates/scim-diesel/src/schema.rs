//! Diesel table definitions, matching `migrations/{sqlite,postgres}`.
//! `tests::schema_matches_migrations` checks them against a migrated database.

diesel::table! {
    /// tenants
    tenants (id) {
        /// id
        id -> Text,
        /// name
        name -> Text,
        /// created
        created -> Text,
    }
}

diesel::table! {
    /// bearer token hashes
    tokens (id) {
        /// id
        id -> Text,
        /// tenant
        tenant_id -> Text,
        /// label
        name -> Text,
        /// SHA-256 hex
        token_hash -> Text,
        /// created
        created -> Text,
        /// revoked at
        revoked -> Nullable<Text>,
    }
}

diesel::table! {
    /// SCIM resources
    resources (id) {
        /// id
        id -> Text,
        /// tenant
        tenant_id -> Text,
        /// User, Group
        resource_type -> Text,
        /// version counter
        version -> BigInt,
        /// created
        created -> Text,
        /// last modified
        last_modified -> Text,
        /// externalId
        external_id -> Nullable<Text>,
        /// folded userName
        user_name_ci -> Nullable<Text>,
        /// folded displayName
        display_name_ci -> Nullable<Text>,
        /// display
        display -> Nullable<Text>,
        /// JSON document
        data -> Text,
        /// argon2id hash of the write-only password
        password_hash -> Nullable<Text>,
    }
}

diesel::table! {
    /// direct group membership
    group_members (group_id, member_id) {
        /// group
        group_id -> Text,
        /// member
        member_id -> Text,
    }
}

diesel::table! {
    /// one row per attribute value, for filters
    resource_values (resource_id, path, ordinal) {
        /// resource
        resource_id -> Text,
        /// tenant
        tenant_id -> Text,
        /// resource type
        resource_type -> Text,
        /// lower-case attribute path
        path -> Text,
        /// element index
        ordinal -> BigInt,
        /// string value (folded unless caseExact)
        str_value -> Nullable<Text>,
        /// number value
        num_value -> Nullable<Double>,
        /// boolean value
        bool_value -> Nullable<Bool>,
    }
}

diesel::table! {
    /// resources per tenant and type, kept by triggers (a type's count is the sum of its slots)
    resource_counts (tenant_id, resource_type, slot) {
        /// tenant
        tenant_id -> Text,
        /// resource type
        resource_type -> Text,
        /// slot (spreads concurrent updates on PostgreSQL)
        slot -> Integer,
        /// resources counted in this slot
        n -> BigInt,
    }
}

diesel::table! {
    /// facts about the stored data as a whole (`index_fingerprint`)
    store_state (name) {
        /// what the fact is
        name -> Text,
        /// its value
        value -> Text,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    tenants,
    tokens,
    resources,
    group_members,
    resource_values,
    resource_counts,
    store_state
);
