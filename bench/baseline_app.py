"""The baseline: FastAPI's classic SQL tutorial, written the plain way, on the same models.

A module-level engine and ``sessionmaker``, a ``get_db`` yield dependency and sync ``def``
endpoints; no container, no connection hooks, no admission gate. It runs the same queries
and returns the same shapes as ``app.main:app`` for the benchmarked requests.

    DATABASE_URL=sqlite:///./bench.db uvicorn bench.baseline_app:app
    DATABASE_URL=postgresql+psycopg://user:password@127.0.0.1/bench uvicorn bench.baseline_app:app
"""

import os
from collections.abc import Iterator, Sequence
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from app.database import Base
from app.models import Item, User
from app.schemas import ItemCreate, ItemRead, UserRead

__all__ = ["app"]

SQLALCHEMY_DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///./sql_app.db")

# The tutorial's SQLite-only argument; on PostgreSQL (postgresql+psycopg://) the defaults.
connect_args = {"check_same_thread": False} if SQLALCHEMY_DATABASE_URL.startswith("sqlite") else {}
engine = create_engine(SQLALCHEMY_DATABASE_URL, connect_args=connect_args)
SessionLocal = sessionmaker(autocommit=False, autoflush=False, bind=engine)

Base.metadata.create_all(bind=engine)

app = FastAPI()


def get_db() -> Iterator[Session]:
    db = SessionLocal()
    try:
        yield db
    finally:
        db.close()


DB = Annotated[Session, Depends(get_db)]


@app.get("/users/{user_id}", response_model=UserRead)
def read_user(user_id: int, db: DB) -> User:
    user = db.get(User, user_id, options=[selectinload(User.items)])
    if user is None:
        raise HTTPException(status_code=404, detail="User not found")
    return user


@app.post("/users/{user_id}/items/", response_model=ItemRead)
def create_item_for_user(user_id: int, item: ItemCreate, db: DB) -> Item:
    if db.get(User, user_id) is None:
        raise HTTPException(status_code=404, detail="User not found")
    db_item = Item(**item.model_dump(), owner_id=user_id)
    db.add(db_item)
    db.commit()
    db.refresh(db_item)
    return db_item


@app.get("/items/", response_model=list[ItemRead])
def read_items(
    db: DB,
    skip: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Sequence[Item]:
    return db.scalars(select(Item).order_by(Item.id).offset(skip).limit(limit)).all()
