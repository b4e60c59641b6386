//! Product forms saved per project (reused across shows and imported from CSV). The form is
//! stored as JSON; the name, category and prices are columns so lists need not parse it.

use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;

use super::{Store, in_tx, now_ms};
use crate::error::{Error, Result};
use crate::script::product::Product;

/// What product lists show (the form itself comes from [`Store::product`]).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProductSummary {
    pub id: i64,
    pub project_id: i64,
    pub name: String,
    pub category: String,
    pub live_price: Option<f64>,
    pub link_no: Option<u32>,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProductRecord {
    #[serde(flatten)]
    pub summary: ProductSummary,
    pub product: Product,
}

const COLUMNS: &str = "id, project_id, name, category, live_price, link_no, updated_at";

fn summary(r: &Row<'_>) -> rusqlite::Result<ProductSummary> {
    Ok(ProductSummary {
        id: r.get(0)?,
        project_id: r.get(1)?,
        name: r.get(2)?,
        category: r.get(3)?,
        live_price: r.get(4)?,
        link_no: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

fn insert(tx: &rusqlite::Transaction<'_>, project_id: i64, p: &Product, now: i64) -> Result<i64> {
    tx.execute(
        "INSERT INTO products (project_id, name, category, live_price, link_no, data, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        params![project_id, p.name, p.category, p.live_price, p.link_no, serde_json::to_string(p)?, now],
    )?;
    Ok(tx.last_insert_rowid())
}

impl Store {
    /// Saves a product form (normalised and validated first): a new one without `id`, else
    /// replaces that one.
    pub fn save_product(
        &self,
        project_id: i64,
        id: Option<i64>,
        product: &Product,
    ) -> Result<ProductRecord> {
        self.ensure_live_project(project_id)?;
        let p = product.normalized()?;
        let now = now_ms();
        let mut conn = self.conn();
        let id = in_tx(&mut conn, |tx| match id {
            None => insert(tx, project_id, &p, now),
            Some(id) => {
                let n = tx.execute(
                    "UPDATE products SET name = ?3, category = ?4, live_price = ?5, link_no = ?6, data = ?7, updated_at = ?8
                     WHERE id = ?1 AND project_id = ?2",
                    params![id, project_id, p.name, p.category, p.live_price, p.link_no, serde_json::to_string(&p)?, now],
                )?;
                if n == 0 {
                    return Err(Error::NotFound {
                        what: "product",
                        id,
                    });
                }
                Ok(id)
            }
        })?;
        drop(conn);
        self.product(id)
    }

    /// Saves many products in one transaction (a CSV import): all or none.
    pub fn import_products(&self, project_id: i64, products: &[Product]) -> Result<Vec<i64>> {
        self.ensure_live_project(project_id)?;
        let now = now_ms();
        let mut conn = self.conn();
        in_tx(&mut conn, |tx| {
            products
                .iter()
                .map(|p| insert(tx, project_id, p, now))
                .collect()
        })
    }

    pub fn product(&self, id: i64) -> Result<ProductRecord> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!("SELECT {COLUMNS}, data FROM products WHERE id = ?1"),
                [id],
                |r| Ok((summary(r)?, r.get::<_, String>(7)?)),
            )
            .optional()?
            .ok_or(Error::NotFound {
                what: "product",
                id,
            })?;
        let product = serde_json::from_str(&row.1)
            .map_err(|e| Error::Internal(format!("product {id} is unreadable: {e}")))?;
        Ok(ProductRecord {
            summary: row.0,
            product,
        })
    }

    /// A project's products by name; `query` keeps those whose name contains it.
    pub fn list_products(&self, project_id: i64, query: &str) -> Result<Vec<ProductSummary>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM products WHERE project_id = ?1 AND (?2 = '' OR instr(name, ?2) > 0)
             ORDER BY name COLLATE NOCASE, id"
        ))?;
        let rows = stmt
            .query_map(params![project_id, query.trim()], summary)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn delete_product(&self, id: i64) -> Result<()> {
        if self
            .conn()
            .execute("DELETE FROM products WHERE id = ?1", [id])?
            == 0
        {
            return Err(Error::NotFound {
                what: "product",
                id,
            });
        }
        Ok(())
    }
}
