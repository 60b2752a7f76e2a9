//! Objects that may not parse, so that one bad object does not stop a whole watch.
//!
//! kube-rs' watcher fails a whole list (and a watch event) when one object does not deserialize,
//! and retrying does not help: the same object comes back. Egret's kinds and the foreign kinds
//! are therefore watched as [`Lenient`]: the metadata always parses (the API server guarantees
//! it), the object itself is kept as the error naming the field when it does not. The source
//! reports such an object and keeps its last good version (see `source::Relay`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;

/// An object of kind `K`, or why it did not parse.
#[derive(Debug, Clone)]
pub struct Lenient<K> {
    /// Its metadata (name, namespace, resourceVersion).
    pub metadata: ObjectMeta,
    /// The object, or the field path and reason it failed to parse.
    pub object: Result<K, String>,
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Lenient<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let metadata = value.get("metadata").and_then(|m| ObjectMeta::deserialize(m).ok()).unwrap_or_default();
        let object = serde_path_to_error::deserialize::<_, K>(value).map_err(|e| {
            let path = e.path().to_string();
            if path == "." { e.inner().to_string() } else { format!("{path}: {}", e.inner()) }
        });
        Ok(Lenient { metadata, object })
    }
}

impl<K: kube::Resource> kube::Resource for Lenient<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }

    fn api_version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::api_version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egret_api::v1alpha1::Egress;
    use serde_json::json;

    #[test]
    fn a_bad_object_keeps_its_metadata_and_names_the_field() {
        let bad = json!({
            "apiVersion": "egret.dev/v1alpha1", "kind": "Egress",
            "metadata": {"name": "eg", "resourceVersion": "7"},
            "spec": {"appliedTo": {"podSelector": {"matchLabels": {"app": "web"}}}, "externalIPPool": 5},
        });
        let l: Lenient<Egress> = serde_json::from_value(bad).unwrap();
        assert_eq!(l.metadata.name.as_deref(), Some("eg"));
        let err = l.object.unwrap_err();
        assert!(err.starts_with("spec.externalIPPool: invalid type"), "{err}");
        let good = json!({
            "apiVersion": "egret.dev/v1alpha1", "kind": "Egress", "metadata": {"name": "eg"},
            "spec": {"appliedTo": {"podSelector": {"matchLabels": {"app": "web"}}}, "externalIPPool": "p"},
        });
        let l: Lenient<Egress> = serde_json::from_value(good).unwrap();
        assert!(l.object.is_ok());
    }
}
