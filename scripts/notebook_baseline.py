#!/usr/bin/env python
"""The original notebook's training pipeline, reimplemented faithfully as the speed baseline.

Source: ``shared/seed/original_notebook.txt`` (steps 04 to 08). What is kept exactly:

* every item is re-read and gunzipped every epoch (``gzip.GzipFile`` over the file object),
  decoded by PIL and converted to RGB (image) or L (mask);
* ``transforms.Compose([Resize((256, 256)), ToTensor()])`` is applied to the image *and* the
  mask, so the mask goes through the same bilinear resize and stops being binary;
* ``DataLoader(batch_size=16, shuffle=True)`` with the default ``num_workers=0`` for training,
  ``shuffle=False`` for validation;
* the notebook's own ``ResNetUNet`` class (torchvision resnet34, no pretrained weights) in fp32,
  contiguous memory format, no AMP;
* ``BCEWithLogitsLoss``, ``Adam(lr=1e-4)``, the per-batch ``iou_score`` averaged over batches,
  ``loss.item()`` and the tqdm bars in the loop, ``torch.cuda.empty_cache()`` before
  validation, ``torch.save(state_dict)`` of the best model, early stopping with patience 7.

What differs, because it runs off-Snowflake: ``SnowflakeFile.open(path, "rb")`` becomes
``open(path, "rb")`` (the same gzip byte stream), the pairs come from a local folder
instead of the ``V_TRAINING_DATA`` view, and the best model is saved to ``save_path``.
Timers are read around the loop body to split data waiting from compute; they change
nothing the loop does.

Run alone::

    python scripts/notebook_baseline.py --data DIR --epochs 3
    python scripts/notebook_baseline.py --data DIR --epochs 100 --minutes 30 --save best.pth

``DIR`` holds ``train/{images,masks}/*.gz`` and ``val/{images,masks}/*.gz`` with the same
file name for an image and its mask.
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as models
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from tqdm.auto import tqdm

# --------------------------------------------------------------------------- step 04


def load_snowflake_gz_internal(path, is_mask=False):
    try:
        # The notebook opens the stage file with SnowflakeFile.open(path, "rb").
        # On décompresse le flux gzip
        with open(path, "rb") as f, gzip.GzipFile(fileobj=f) as gz:
            img = Image.open(gz)
            return img.convert("L") if is_mask else img.convert("RGB")
    except Exception as e:
        print(f"Erreur sur {path} : {e}")
        return None


# --------------------------------------------------------------------------- step 05


class SnowflakeFissureDataset(Dataset):
    def __init__(self, pairs, transform=None):
        self.pairs = pairs
        self.transform = transform

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, idx):
        img_path, mask_path = self.pairs[idx]
        image = load_snowflake_gz_internal(img_path, is_mask=False)
        mask = load_snowflake_gz_internal(mask_path, is_mask=True)
        if self.transform:
            image = self.transform(image)
            mask = self.transform(mask)
        return image, mask


def make_transforms(size=256):
    return transforms.Compose(
        [
            transforms.Resize((size, size)),
            transforms.ToTensor(),
        ]
    )


# --------------------------------------------------------------------------- step 07


class DoubleConv(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.double_conv(x)


class ResNetUNet(nn.Module):
    def __init__(self, n_classes=1):
        super().__init__()
        resnet = models.resnet34(weights=None)

        self.encoder0 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu)
        self.pool0 = resnet.maxpool
        self.encoder1 = resnet.layer1
        self.encoder2 = resnet.layer2
        self.encoder3 = resnet.layer3
        self.encoder4 = resnet.layer4

        self.up4 = nn.ConvTranspose2d(512, 256, kernel_size=2, stride=2)
        self.dec4 = DoubleConv(512, 256)
        self.up3 = nn.ConvTranspose2d(256, 128, kernel_size=2, stride=2)
        self.dec3 = DoubleConv(256, 128)
        self.up2 = nn.ConvTranspose2d(128, 64, kernel_size=2, stride=2)
        self.dec2 = DoubleConv(128, 64)
        self.up1 = nn.ConvTranspose2d(64, 64, kernel_size=2, stride=2)
        self.dec1 = DoubleConv(128, 64)

        self.final = nn.Conv2d(64, n_classes, kernel_size=1)

    def forward(self, x):
        e0 = self.encoder0(x)
        e1 = self.encoder1(self.pool0(e0))
        e2 = self.encoder2(e1)
        e3 = self.encoder3(e2)
        e4 = self.encoder4(e3)

        d4 = self.up4(e4)
        d4 = self.dec4(torch.cat([d4, e3], dim=1))
        d3 = self.up3(d4)
        d3 = self.dec3(torch.cat([d3, e2], dim=1))
        d2 = self.up2(d3)
        d2 = self.dec2(torch.cat([d2, e1], dim=1))
        d1 = self.up1(d2)
        d1 = self.dec1(torch.cat([d1, e0], dim=1))

        out = self.final(d1)
        return F.interpolate(out, size=x.shape[2:], mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- step 08


def iou_score(outputs, masks, threshold=0.5):
    outputs = torch.sigmoid(outputs)
    outputs = (outputs > threshold).float()
    intersection = (outputs * masks).sum()
    union = outputs.sum() + masks.sum() - intersection
    return (intersection + 1e-6) / (union + 1e-6)


def _timed_batches(loader, clock):
    """Yield the loader's batches, adding the time spent waiting for each to ``clock[0]``."""
    iterator = iter(loader)
    while True:
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            clock[0] += time.perf_counter() - start
            return
        clock[0] += time.perf_counter() - start
        yield batch


class NotebookPipeline:
    """Steps 05-08 of the notebook; :meth:`epoch` is one pass of its ``for epoch`` loop body."""

    def __init__(
        self,
        train_pairs,
        val_pairs,
        device=None,
        batch_size=16,
        size=256,
        learning_rate=1e-4,
        num_epochs=11,
        patience=7,
        save_path="best_model.pth",
        progress=True,
        minutes=None,
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        data_transforms = make_transforms(size)
        self.train_dataset = SnowflakeFissureDataset(train_pairs, transform=data_transforms)
        self.val_dataset = SnowflakeFissureDataset(val_pairs, transform=data_transforms)
        self.train_loader = DataLoader(self.train_dataset, batch_size=batch_size, shuffle=True)
        self.val_loader = DataLoader(self.val_dataset, batch_size=batch_size, shuffle=False)

        self.num_epochs = num_epochs
        self.patience = patience
        self.save_path = str(save_path)
        self.progress = progress
        # The notebook has no time budget; ``minutes`` cuts training at that wall time (the
        # epoch under way stops after its current batch, then validates and may be saved),
        # so the baseline can be given the same minutes as a fissure run. Validation after
        # the cut is not counted against it, which only favours the baseline.
        self.deadline = None if minutes is None else time.perf_counter() + 60 * minutes
        self.model = ResNetUNet(n_classes=1).to(self.device)
        self.criterion = torch.nn.BCEWithLogitsLoss()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=learning_rate)
        self.best_val_iou = 0.0
        self.counter = 0
        self.epoch_index = 0
        self.train_losses, self.val_losses = [], []
        self.train_ious, self.val_ious = [], []

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def epoch(self):
        """One epoch: training, validation, best-model save, early-stopping counter.

        Returns the epoch's metrics and timings in seconds: ``seconds`` (whole epoch),
        ``train_seconds``, ``train_data_wait`` (waiting for the loader: read, gunzip,
        decode, resize, to-tensor, collate), ``val_seconds``, ``val_data_wait``,
        ``save_seconds``, and ``stop`` (early stopping reached).
        """
        model, device = self.model, self.device
        criterion, optimizer = self.criterion, self.optimizer
        epoch, num_epochs = self.epoch_index, self.num_epochs
        t_epoch = time.perf_counter()
        train_wait, val_wait = [0.0], [0.0]

        # --------- Entraînement ----------
        model.train()
        epoch_loss, epoch_iou, batches = 0.0, 0.0, 0
        train_pbar = tqdm(
            _timed_batches(self.train_loader, train_wait),
            total=len(self.train_loader),
            desc=f"Epoch {epoch + 1}/{num_epochs} [Train]",
            leave=False,
            disable=not self.progress,
        )
        for images, masks in train_pbar:
            images, masks = images.to(device), masks.to(device).float()

            optimizer.zero_grad()
            outputs = model(images)
            loss = criterion(outputs, masks)
            loss.backward()
            optimizer.step()

            epoch_loss += loss.item()
            current_iou = iou_score(outputs, masks).item()
            epoch_iou += current_iou
            train_pbar.set_postfix({"loss": f"{loss.item():.4f}", "iou": f"{current_iou:.4f}"})
            batches += 1
            if self.out_of_time():
                break

        self.train_losses.append(epoch_loss / batches)
        self.train_ious.append(epoch_iou / batches)
        self._sync()
        t_train = time.perf_counter()

        # --------- Validation ----------
        model.eval()
        val_loss, val_iou = 0.0, 0.0
        torch.cuda.empty_cache()

        with torch.no_grad():
            val_pbar = tqdm(
                _timed_batches(self.val_loader, val_wait),
                total=len(self.val_loader),
                desc=f"Epoch {epoch + 1}/{num_epochs} [Val]",
                leave=False,
                disable=not self.progress,
            )
            for images, masks in val_pbar:
                images, masks = images.to(device), masks.to(device).float()
                outputs = model(images)
                loss = criterion(outputs, masks)

                val_loss += loss.item()
                current_val_iou = iou_score(outputs, masks).item()
                val_iou += current_val_iou
                val_pbar.set_postfix(
                    {"val_loss": f"{loss.item():.4f}", "val_iou": f"{current_val_iou:.4f}"}
                )

        self.val_losses.append(val_loss / len(self.val_loader))
        self.val_ious.append(val_iou / len(self.val_loader))
        t_val = time.perf_counter()

        if self.progress:
            print(
                f"Epoch {epoch + 1:02d}: Train Loss: {self.train_losses[-1]:.4f} | "
                f"IoU: {self.train_ious[-1]:.4f} || Val Loss: {self.val_losses[-1]:.4f} | "
                f"Val IoU: {self.val_ious[-1]:.4f}"
            )

        # --------- Sauvegarde du meilleur modèle et Early Stopping ----------
        stop = False
        if self.val_ious[-1] > self.best_val_iou:
            self.best_val_iou = self.val_ious[-1]
            torch.save(model.state_dict(), self.save_path)
            if self.progress:
                print(f" Nouveau meilleur modèle sauvegardé ! (IoU: {self.best_val_iou:.4f})")
            self.counter = 0
        else:
            self.counter += 1
            if self.counter >= self.patience:
                if self.progress:
                    print(f"Early stopping à l'époque {epoch + 1}. Le modèle ne progresse plus.")
                stop = True
        t_end = time.perf_counter()
        self.epoch_index += 1
        return {
            "epoch": epoch + 1,
            "train_loss": self.train_losses[-1],
            "train_iou": self.train_ious[-1],
            "val_loss": self.val_losses[-1],
            "val_iou": self.val_ious[-1],
            "seconds": t_end - t_epoch,
            "train_seconds": t_train - t_epoch,
            "train_data_wait": train_wait[0],
            "val_seconds": t_val - t_train,
            "val_data_wait": val_wait[0],
            "save_seconds": t_end - t_val,
            "steps": batches,
            "stop": stop or self.out_of_time(),
        }

    def out_of_time(self):
        return self.deadline is not None and time.perf_counter() >= self.deadline

    def fit(self):
        history = []
        for _ in range(self.num_epochs):
            history.append(self.epoch())
            if history[-1]["stop"]:
                break
        return history


# --------------------------------------------------------------------------- step 02


def folder_pairs(root, split):
    """``(image, mask)`` paths of ``root/split/{images,masks}/*.gz``, paired by file name."""
    images = Path(root) / split / "images"
    masks = Path(root) / split / "masks"
    pairs = []
    for image in sorted(images.glob("*.gz")):
        mask = masks / image.name
        if not mask.is_file():
            raise FileNotFoundError(f"{mask}: no mask for {image}")
        pairs.append((str(image), str(mask)))
    if not pairs:
        raise FileNotFoundError(f"{images}: no .gz images")
    return pairs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder with train/ and val/ subfolders")
    parser.add_argument("--epochs", type=int, default=11)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: as the notebook)")
    parser.add_argument("--save", default="best_model.pth")
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop training after this many minutes (not in the notebook)")
    parser.add_argument("--seed", type=int, default=None, help="torch.manual_seed first")
    args = parser.parse_args(argv)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    pipeline = NotebookPipeline(
        folder_pairs(args.data, "train"),
        folder_pairs(args.data, "val"),
        device=args.device,
        num_epochs=args.epochs,
        save_path=args.save,
        minutes=args.minutes,
    )
    for row in pipeline.fit():
        print(
            f"epoch {row['epoch']}: {row['steps']} steps, val IoU {row['val_iou']:.4f}, "
            f"{row['seconds']:.1f}s (train {row['train_seconds']:.1f}s, "
            f"waiting for data {row['train_data_wait']:.1f}s; val {row['val_seconds']:.1f}s)"
        )


if __name__ == "__main__":
    main()
