//! The OpenAPI 3.1 document of the API, served at `GET /api/v1/openapi.json`.
//!
//! It is written by hand (`openapi.json` beside this file) rather than derived: the request and
//! response bodies live in cim-proto, shared with the client SDK, and deriving schemas there
//! would make every SDK user compile a schema generator. The tests below keep the document and
//! the router's endpoint table ([`crate::api::endpoints`]) in step, in both directions, and
//! check that every schema it refers to exists.

/// The document, as served.
pub(crate) const DOCUMENT: &str = include_str!("openapi.json");

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::DOCUMENT;
    use crate::api::endpoints;

    const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is valid JSON")
    }

    fn documented_operations(doc: &Value) -> BTreeSet<(String, String)> {
        let paths = doc["paths"].as_object().expect("paths is an object");
        paths
            .iter()
            .flat_map(|(path, item)| {
                METHODS
                    .iter()
                    .filter(|method| item.get(**method).is_some())
                    .map(move |method| (method.to_string(), path.clone()))
            })
            .collect()
    }

    #[test]
    fn the_document_is_openapi_3_1() {
        assert_eq!(document()["openapi"], "3.1.0");
    }

    #[test]
    fn every_served_endpoint_is_documented_and_nothing_else() {
        let served: BTreeSet<(String, String)> = endpoints()
            .iter()
            .map(|e| (e.method.to_string(), e.path.to_string()))
            .collect();
        let documented = documented_operations(&document());
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty(),
            "served but not documented: {undocumented:?}"
        );
        assert!(
            unserved.is_empty(),
            "documented but not served: {unserved:?}"
        );
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for reference in refs {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{reference} is not a local reference"));
            assert!(
                doc.pointer(pointer).is_some(),
                "{reference} does not resolve"
            );
        }
    }

    fn collect_refs(value: &Value, refs: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(reference)) = map.get("$ref") {
                    refs.push(reference.clone());
                }
                map.values().for_each(|v| collect_refs(v, refs));
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, refs)),
            _ => {}
        }
    }
}
