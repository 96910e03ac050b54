fn main() {
    let a: Vec<String> = std::env::args().collect();
    let op: flasheva::Op = a[1].parse().unwrap();
    let p = flasheva::SpecParams {
        head_dim: Some(a[2].parse().unwrap()),
        window: Some(a[3].parse().unwrap()),
        chunk: Some(a[4].parse().unwrap()),
        local: Some(a[5].parse().unwrap()),
        dtype: Some(a[6].parse().unwrap()),
        group: Some(4),
    };
    let s = flasheva::KernelSpec::new(op, &p).unwrap();
    let t = flasheva::Tile::default_for(&s, "sm_90".parse().unwrap());
    let t = if a.len() > 7 {
        t.with_overrides(op, &a[7]).unwrap()
    } else {
        t
    };
    print!("{}", flasheva::render::render(&s, &t).unwrap());
}
