//! The harness itself, on the backend `MESH_HARNESS` chooses: Envoy runs where it was asked
//! to, its log is captured, and nothing of it is left after the mesh is dropped.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use mesh_integration::Mesh;
use mesh_integration::envoy::{Envoy, Harness, READY_LINE};

/// Whether docker still knows the container.
fn container_exists(id: &str) -> bool {
    Command::new("docker")
        .args(["container", "inspect", id])
        .output()
        .expect("the docker CLI")
        .status
        .success()
}

#[test]
fn envoy_runs_on_the_chosen_backend_and_is_gone_after_drop() {
    let harness = Harness::from_env().unwrap();
    let mesh = Mesh::builder().start().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(mesh.get("/plain").send().service().as_deref(), Some("v1"));
    assert!(
        mesh.envoy_log().contains(READY_LINE),
        "{}",
        mesh.envoy_log()
    );
    match (harness, mesh.envoy()) {
        (Harness::Process, Envoy::Process(envoy)) => {
            let proc_dir = format!("/proc/{}", envoy.pid());
            assert!(Path::new(&proc_dir).exists());
            drop(mesh);
            assert!(!Path::new(&proc_dir).exists(), "envoy still running");
        }
        (Harness::Docker, Envoy::Container(envoy)) => {
            let id = envoy.id().to_owned();
            assert!(container_exists(&id));
            drop(mesh);
            assert!(!container_exists(&id), "container {id} left behind");
        }
        (harness, _) => panic!("{harness:?} was asked for, another backend runs envoy"),
    }
}
