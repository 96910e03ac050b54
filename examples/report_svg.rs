//! Re-renders a tuning report's plot from its results.json:
//!     cargo run --example report_svg -- results.json out.svg
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let recs: Vec<flasheva::cache::winner::WinnerRecord> =
        serde_json::from_slice(&std::fs::read(&a[1]).expect("read results.json"))
            .expect("parse results.json");
    std::fs::write(&a[2], flasheva::tune::report::svg(&recs)).expect("write the svg");
}
