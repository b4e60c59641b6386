//! Products from a CSV file, as shops keep them in Excel or export them from their back office.
//!
//! Header (any order; extra columns are ignored; `name` and `selling_points` are required):
//! `name,category,selling_points,audience,scenarios,daily_price,live_price,price_basis,mechanism,
//! stock,link_no,specs,faq,proofs,forbidden_claims` and optionally `brand_facts`.
//!
//! - List fields separate items with `|`. Inside an item, `>` separates parts: a selling point
//!   is `feature>advantage>benefit>proof` (only the feature is needed), a FAQ item
//!   `question>answer`, a proof `name>number>issuer`.
//! - Encoding: UTF-8 with or without a BOM; a file that is not valid UTF-8 is read as GB18030
//!   (what Excel in China writes for "CSV").
//! - Each row with errors is reported (row number as a spreadsheet shows it, the column, why) and
//!   skipped; the other rows are imported.

use serde::Serialize;

use super::product::{Certificate, Faq, Product, SellingPoint};
use crate::error::{Error, Result};

/// Largest CSV accepted (bytes).
pub const MAX_CSV_BYTES: usize = 64 * 1024 * 1024;
pub const REQUIRED: [&str; 2] = ["name", "selling_points"];
pub const KNOWN: [&str; 16] = [
    "name",
    "category",
    "selling_points",
    "audience",
    "scenarios",
    "daily_price",
    "live_price",
    "price_basis",
    "mechanism",
    "stock",
    "link_no",
    "specs",
    "faq",
    "proofs",
    "forbidden_claims",
    "brand_facts",
];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowError {
    /// The row as a spreadsheet numbers it (the header is row 1).
    pub row: u64,
    /// The column the problem is in, when it is one column's.
    pub column: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Parsed {
    pub products: Vec<Product>,
    pub errors: Vec<RowError>,
    /// `utf-8`, `utf-8 (BOM)` or `gb18030`.
    pub encoding: &'static str,
    /// Columns present that Atelier does not read.
    pub ignored_columns: Vec<String>,
}

/// The file's text: UTF-8 (BOM stripped) or, failing that, GB18030.
pub fn decode(bytes: &[u8]) -> (String, &'static str) {
    if let Some(rest) = bytes.strip_prefix(b"\xEF\xBB\xBF") {
        return (String::from_utf8_lossy(rest).into_owned(), "utf-8 (BOM)");
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), "utf-8"),
        Err(_) => {
            let (text, _, _) = encoding_rs::GB18030.decode(bytes);
            (text.into_owned(), "gb18030")
        }
    }
}

fn list(s: &str) -> Vec<String> {
    s.split(['|', '｜'])
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parts(item: &str) -> Vec<String> {
    item.split(['>', '＞'])
        .map(|x| x.trim().to_owned())
        .collect()
}

fn number(s: &str) -> std::result::Result<Option<f64>, String> {
    let t: String = s
        .chars()
        .filter(|c| !matches!(c, '¥' | '￥' | '元' | ',' | '，') && !c.is_whitespace())
        .collect();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse::<f64>()
        .map(Some)
        .map_err(|_| format!("“{s}” is not a price"))
}

fn whole<T: std::str::FromStr>(s: &str, what: &str) -> std::result::Result<Option<T>, String> {
    let t: String = s
        .chars()
        .filter(|c| !matches!(c, '件' | '号' | ',' | '，') && !c.is_whitespace())
        .collect();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse::<T>()
        .map(Some)
        .map_err(|_| format!("“{s}” is not {what}"))
}

/// Reads a CSV file's bytes into product forms. Only a file that cannot be read as a table at
/// all (too big, no header, a required column missing) is an error; row problems are listed.
pub fn parse(bytes: &[u8]) -> Result<Parsed> {
    if bytes.len() > MAX_CSV_BYTES {
        return Err(Error::invalid(format!(
            "the file is {} MB; at most {} MB can be imported",
            bytes.len() >> 20,
            MAX_CSV_BYTES >> 20
        )));
    }
    let (text, encoding) = decode(bytes);
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = rdr
        .headers()
        .map_err(|e| Error::invalid(format!("the first row (the header) cannot be read: {e}")))?
        .iter()
        .map(|h| h.trim().trim_start_matches('\u{feff}').to_lowercase())
        .collect();
    if headers.iter().all(String::is_empty) {
        return Err(Error::invalid(
            "the file is empty: the first row must name the columns (name, selling_points, …)",
        ));
    }
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|r| !headers.iter().any(|h| h == r))
        .collect();
    if !missing.is_empty() {
        return Err(Error::invalid(format!(
            "required column{} missing: {} (the header has: {})",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            headers.join(", ")
        )));
    }
    let col = |name: &str| headers.iter().position(|h| h == name);
    let idx: Vec<Option<usize>> = KNOWN.iter().map(|k| col(k)).collect();
    let ignored_columns = headers
        .iter()
        .filter(|h| !h.is_empty() && !KNOWN.contains(&h.as_str()))
        .cloned()
        .collect();
    let mut out = Parsed {
        products: Vec::new(),
        errors: Vec::new(),
        encoding,
        ignored_columns,
    };
    for record in rdr.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let row = e.position().map(|p| p.line()).unwrap_or(0);
                out.errors.push(RowError {
                    row,
                    column: None,
                    message: format!("the row cannot be read: {e}"),
                });
                continue;
            }
        };
        // The line the record starts on: what a spreadsheet calls its row when no field
        // spans lines; with multi-line fields it is still the row's first line.
        let row = record.position().map(|p| p.line()).unwrap_or(0);
        if record.iter().all(str::is_empty) {
            continue;
        }
        let get = |name: &str| -> &str {
            KNOWN
                .iter()
                .position(|k| *k == name)
                .and_then(|i| idx[i])
                .and_then(|i| record.get(i))
                .unwrap_or("")
        };
        match product_of(&get) {
            Ok(p) => match p.normalized() {
                Ok(p) => out.products.push(p),
                Err(e) => out.errors.push(RowError {
                    row,
                    column: None,
                    message: e.to_string(),
                }),
            },
            Err((column, message)) => out.errors.push(RowError {
                row,
                column: Some(column.to_owned()),
                message,
            }),
        }
    }
    Ok(out)
}

type FieldError = (&'static str, String);

fn product_of<'a>(get: &dyn Fn(&str) -> &'a str) -> std::result::Result<Product, FieldError> {
    let name = get("name");
    if name.is_empty() {
        return Err(("name", "the product has no name".into()));
    }
    let selling_points: Vec<SellingPoint> = list(get("selling_points"))
        .iter()
        .map(|item| {
            let mut p = parts(item).into_iter();
            SellingPoint {
                feature: p.next().unwrap_or_default(),
                advantage: p.next().unwrap_or_default(),
                benefit: p.next().unwrap_or_default(),
                proof: p.next().unwrap_or_default(),
            }
        })
        .collect();
    if selling_points.is_empty() {
        return Err((
            "selling_points",
            "at least one selling point is needed".into(),
        ));
    }
    if selling_points.len() > 3 {
        return Err((
            "selling_points",
            format!(
                "{} selling points; at most 3 (a host can carry three)",
                selling_points.len()
            ),
        ));
    }
    let faq = list(get("faq"))
        .iter()
        .map(|item| {
            let p = parts(item);
            match p.as_slice() {
                [q, a] if !q.is_empty() && !a.is_empty() => Ok(Faq {
                    question: q.clone(),
                    answer: a.clone(),
                }),
                _ => Err(("faq", format!("“{item}” must be question>answer"))),
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let certificates = list(get("proofs"))
        .iter()
        .map(|item| {
            let mut p = parts(item).into_iter();
            let c = Certificate { name: p.next().unwrap_or_default(), number: p.next().unwrap_or_default(), issuer: p.next().unwrap_or_default() };
            if c.number.is_empty() {
                Err(("proofs", format!("“{item}” has no number: write name>number>issuer (a certificate must be verifiable)")))
            } else {
                Ok(c)
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Product {
        name: name.to_owned(),
        category: get("category").to_owned(),
        selling_points,
        audience: get("audience").to_owned(),
        scenarios: list(get("scenarios")),
        daily_price: number(get("daily_price")).map_err(|e| ("daily_price", e))?,
        live_price: number(get("live_price")).map_err(|e| ("live_price", e))?,
        price_basis: get("price_basis").to_owned(),
        mechanism: list(get("mechanism")),
        stock: whole(get("stock"), "a whole number of pieces").map_err(|e| ("stock", e))?,
        link_no: whole(get("link_no"), "a link number").map_err(|e| ("link_no", e))?,
        specs: list(get("specs")),
        faq,
        brand_facts: list(get("brand_facts")),
        certificates,
        forbidden_claims: list(get("forbidden_claims")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "name,category,selling_points,audience,scenarios,daily_price,live_price,price_basis,mechanism,stock,link_no,specs,faq,proofs,forbidden_claims";

    #[test]
    fn a_bom_file_with_quoted_commas_and_newlines_imports() {
        let csv = format!(
            "\u{feff}{HEADER},note\n\"保温杯, 500ml\",,\"316 内胆>不挂味>泡茶不串味|\n真空层>保温久\",上班族,办公室|通勤,199,129,前 7 日最低成交价,送杯套|满 200 减 20 券,500,3,500ml,能装热水吗>能,食品接触检测>A2024-001>SGS,最好,internal\n"
        );
        let p = parse(csv.as_bytes()).unwrap();
        assert_eq!(p.encoding, "utf-8 (BOM)");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.ignored_columns, ["note"]);
        let x = &p.products[0];
        assert_eq!(x.name, "保温杯, 500ml");
        assert_eq!(x.selling_points.len(), 2);
        assert_eq!(
            (
                x.selling_points[0].advantage.as_str(),
                x.selling_points[1].feature.as_str()
            ),
            ("不挂味", "真空层")
        );
        assert_eq!(
            (x.daily_price, x.live_price, x.stock, x.link_no),
            (Some(199.0), Some(129.0), Some(500), Some(3))
        );
        assert_eq!(x.certificates[0].number, "A2024-001");
        assert_eq!(x.faq[0].answer, "能");
        assert_eq!(x.mechanism.len(), 2);
    }

    #[test]
    fn gb18030_as_excel_writes_it() {
        let text = format!("{HEADER}\n羊毛围巾,,柔软>不扎脖子,,,,,,,,,,,,\n");
        let (bytes, _, _) = encoding_rs::GB18030.encode(&text);
        assert!(
            std::str::from_utf8(&bytes).is_err(),
            "the sample must not be UTF-8"
        );
        let p = parse(&bytes).unwrap();
        assert_eq!(p.encoding, "gb18030");
        assert_eq!(p.products[0].name, "羊毛围巾");
        assert_eq!(p.products[0].selling_points[0].advantage, "不扎脖子");
    }

    #[test]
    fn bad_rows_are_reported_by_row_and_column_and_the_rest_imports() {
        let csv = format!(
            "{HEADER}\n好杯子,,保温,,,199,129,,,,,,,,\nA,,x,,,abc,,,,,,,,,\nB,,,,,,,,,,,,,,\nC,,x,,,,,,,lots,,,,,\nD,,x,,,,,,,,,,,证书>,\nE,,x,,,,,,,,,,问,,\nF,,x,,,,,,,,,,,,\n"
        );
        let p = parse(csv.as_bytes()).unwrap();
        let got: Vec<(u64, Option<&str>)> = p
            .errors
            .iter()
            .map(|e| (e.row, e.column.as_deref()))
            .collect();
        // Row 2: a comparison price without its basis (the whole form is refused, no column).
        assert_eq!(
            got,
            [
                (2, None),
                (3, Some("daily_price")),
                (4, Some("selling_points")),
                (5, Some("stock")),
                (6, Some("proofs")),
                (7, Some("faq"))
            ]
        );
        assert!(
            p.errors[0].message.contains("basis") || p.errors[0].message.contains("依据"),
            "{}",
            p.errors[0].message
        );
        assert_eq!(
            p.products
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["F"]
        );
    }

    #[test]
    fn a_missing_required_column_or_an_empty_file_is_refused() {
        let e = parse("name,category\nx,food\n".as_bytes()).unwrap_err();
        assert!(e.to_string().contains("selling_points"), "{e}");
        assert_eq!(parse(b"").unwrap_err().kind(), "invalid_input");
        assert_eq!(
            parse("\u{feff}".as_bytes()).unwrap_err().kind(),
            "invalid_input"
        );
    }

    #[test]
    fn ten_thousand_rows_parse_quickly() {
        let mut csv = String::from(HEADER);
        csv.push('\n');
        for i in 0..10_000 {
            csv.push_str(&format!("商品{i},,卖点{i}>优势>好处,人群,场景1|场景2,99,79,前 30 日最低价,送赠品,{i},{},规格,问>答,检测>N{i}>机构,\n", i % 50 + 1));
        }
        let p = parse(csv.as_bytes()).unwrap();
        assert_eq!(p.products.len(), 10_000);
        assert!(p.errors.is_empty());
    }
}
