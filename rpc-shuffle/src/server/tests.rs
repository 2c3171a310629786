use super::*;

#[test]
fn push_merge_shuffle_manager_strings_are_read_leniently() {
    let sort = "org.apache.spark.shuffle.sort.SortShuffleManager";
    assert_eq!(shuffle_manager_class(sort), sort);
    let push = format!("{sort}:{{\"mergeDir\":\"merge_manager_1\",\"attemptId\":\"1\"}}}}");
    assert_eq!(shuffle_manager_class(&push), sort);
}

#[test]
fn metrics_render_as_prometheus_text() {
    let service = ShuffleService::builder().build().unwrap();
    let text = service.metrics().to_prometheus();
    assert!(text.contains("# TYPE spark_shuffle_service_bytes_served_total counter\n"));
    assert!(text.contains("\nspark_shuffle_service_registered_executors 0\n"));
    assert_eq!(text.lines().count(), 36);
}

#[test]
fn registrations_reload_from_the_store_and_removal_forgets_them() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("blockmgr-1");
    fs::create_dir(&dir).unwrap();
    let db = root.path().join("db.redb");
    let info = ExecutorShuffleInfo {
        local_dirs: vec![dir.display().to_string()],
        sub_dirs_per_local_dir: 64,
        shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
    };
    let build = || {
        ShuffleService::builder()
            .with_local_dir(root.path())
            .with_db(&db)
            .build()
            .unwrap()
    };
    {
        let service = build();
        for (app, exec) in [("app-1", "0"), ("app-1", "1"), ("app-2", "0")] {
            service
                .register(RegisterExecutor {
                    app_id: app.into(),
                    exec_id: exec.into(),
                    executor_info: info.clone(),
                })
                .unwrap();
        }
        assert_eq!(service.metrics().registered_executors, 3);
    }
    let service = build();
    assert_eq!(service.metrics().registered_executors, 3);
    assert_eq!(service.executor("app-1", "1"), Some(info.clone()));
    assert_eq!(service.remove_application("app-1").unwrap(), 2);
    assert_eq!(service.executor("app-1", "0"), None);
    drop(service);
    let service = build();
    assert_eq!(service.metrics().registered_executors, 1);
    assert_eq!(service.executor("app-2", "0"), Some(info));
    drop(service);
    // A service whose roots no longer hold the dirs does not reload them.
    let other = tempfile::tempdir().unwrap();
    let service = ShuffleService::builder()
        .with_local_dir(other.path())
        .with_db(&db)
        .build()
        .unwrap();
    assert_eq!(service.metrics().registered_executors, 0);
}

#[test]
fn registrations_outside_the_roots_are_refused_and_not_stored() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let service = ShuffleService::builder()
        .with_local_dir(root.path())
        .build()
        .unwrap();
    let err = service
        .register(RegisterExecutor {
            app_id: "app".into(),
            exec_id: "0".into(),
            executor_info: ExecutorShuffleInfo {
                local_dirs: vec![outside.path().display().to_string()],
                sub_dirs_per_local_dir: 64,
                shuffle_manager: String::new(),
            },
        })
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("is not within the shuffle service's local dirs"),
        "{err}"
    );
    assert_eq!(service.metrics().registered_executors, 0);
}

#[test]
fn a_missing_root_or_a_zero_limit_is_a_config_error() {
    let err = ShuffleService::builder()
        .with_local_dir("/nonexistent/spark-shuffle-root")
        .build()
        .unwrap_err();
    assert!(matches!(err, ShuffleServiceConfigError::LocalDir { .. }));
    let err = ShuffleService::builder()
        .with_max_streams_per_connection(0)
        .build()
        .unwrap_err();
    assert!(matches!(err, ShuffleServiceConfigError::Zero(_)));
}
