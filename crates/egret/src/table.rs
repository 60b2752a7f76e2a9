//! Plain aligned tables, the way `kubectl get` prints them.

/// Renders rows under a header, columns separated by `sep` and padded to the widest cell.
pub fn render(header: &[&str], rows: &[Vec<String>], sep: &str) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, (c, w)) in cells.into_iter().zip(&widths).enumerate() {
            s.push_str(c);
            if i + 1 < n {
                s.extend(std::iter::repeat_n(' ', w - c.chars().count()));
                s.push_str(sep);
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_align() {
        let t = super::render(&["NAME", "IP"], &[vec!["a-long-name".into(), "10.0.0.1".into()]], "   ");
        assert_eq!(t, "NAME          IP\na-long-name   10.0.0.1\n");
    }
}
