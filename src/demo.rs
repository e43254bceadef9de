pub async fn run(_keep: bool) -> crate::Result {
    Err("demo: not yet".into())
}
