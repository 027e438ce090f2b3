//! A VirtualService's route table (the Envoy route names Istio makes of it), and a route
//! named `default`, which shares its name with the routes Istio makes itself.

use crate::docs::Doc;
use crate::routes::{self, Table};

use super::{Lint, Severity};

/// The route table of a VirtualService; a warning for each route named `default`.
pub(super) fn table(lint: &mut Lint<'_>, doc: &Doc, subject: &str) -> Table {
    let table = routes::virtual_service(&doc.file, &doc.value);
    for route in table.routes.iter().filter(|r| r.name == "default") {
        lint.push(
            Severity::Warning,
            &doc.file,
            subject,
            &route.at,
            "an http route named \"default\" shares its Envoy route name with the routes \
             Istio makes itself (every inbound route, and outbound routes of services \
             without a VirtualService): a plugin policy for \"default\" applies to them too"
                .to_owned(),
        );
    }
    table
}
